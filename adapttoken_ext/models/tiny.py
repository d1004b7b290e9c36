"""Built-in tiny checkpoints, one per supported family: the real architecture at toy size,
with random weights.

Nothing can be downloaded, so the default model of the CLI and the tests is built here
from a config, with a byte-level BPE tokenizer trained offline by the ``tokenizers``
library, the family's special tokens and chat template, and a preprocessor config. It is
saved once under the user cache dir and then loads through the same ``from_pretrained``
path as a real checkpoint. Its answers are meaningless.

``FAMILIES`` maps each HF ``model_type`` to its builder; add a family by adding one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_FAMILY = "qwen2_5_vl"
_VERSION = "1"

# Qwen2-VL's chat template (hub: Qwen/Qwen2.5-VL-7B-Instruct, chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = """You are a helpful assistant. What is happening in the video? Which object appears
first? Answer with the option's letter from the given choices directly. A. B. C. D. E.
The person rides a bike along the road. A rabbit sits in the grass near a tree. What colour
is the car? How many people are there? Where does the scene take place? Describe the video.
"""


def tiny_model_id(family: str = DEFAULT_FAMILY) -> str:
    """The name a tiny checkpoint goes by (``--model`` and the result's ``model``)."""
    return f"adapttoken/tiny-{family}"


def tiny_model_dir(family: str = DEFAULT_FAMILY) -> Path:
    """Where the tiny model lives: ``$ADAPTTOKEN_CACHE`` or the user cache dir."""
    import platformdirs
    root = os.environ.get("ADAPTTOKEN_CACHE") or platformdirs.user_cache_dir("adapttoken_ext")
    return Path(root) / f"tiny-{family}-v{_VERSION}"


def build_tokenizer(out: Path, special_tokens, chat_template: str, eos: str, pad: str,
                    corpus: str = _CORPUS, vocab_size: int = 400, **named):
    """A byte-level BPE tokenizer trained offline on ``corpus``, saved to ``out`` with
    ``chat_template``; ``named``: keyword arguments of ``PreTrainedTokenizerFast`` such as
    named ``extra_special_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos,
                                   pad_token=pad, model_max_length=1 << 24, **named)
    fast.chat_template = chat_template
    fast.save_pretrained(out)
    (out / "chat_template.jinja").write_text(chat_template)
    return fast


def widen_init(model) -> None:
    """Random init is tiny in scale; widen it so outputs vary (seed before building)."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5 * 4)


def _save(model, out: Path, preprocessor: dict, name: str) -> Path:
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    (out / "README.md").write_text(
        f"Tiny {name} with RANDOM weights, built offline by adapttoken_ext.\n"
        "Its answers are meaningless; it exists to run the pipeline without downloads.\n")
    return out


def _qwen2_preprocessor(max_pixels: int) -> dict:
    """The Qwen2/2.5-VL image processor settings of the tiny checkpoints (CLIP constants)."""
    return {"image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "min_pixels": 56 * 56, "max_pixels": max_pixels, "patch_size": 14,
            "temporal_patch_size": 2, "merge_size": 2}


def _qwen2_5_vl_config(tok, hidden: int, mrope_section: list[int], vision_hidden: int, window: int):
    """A small Qwen2.5-VL config of the real layout (4 text layers, 4/2 heads, 2 vision
    layers, the last with full attention), its special ids from ``tok``."""
    from transformers import Qwen2_5_VLConfig
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 20,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section},
            tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
            out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            window_size=window, fullatt_block_indexes=[1], tokens_per_second=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )


def _qwen2_5_vl(out: Path, seed: int) -> Path:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer(out, SPECIAL_TOKENS, CHAT_TEMPLATE, "<|im_end|>", "<|endoftext|>")
    config = _qwen2_5_vl_config(tok, hidden=64, mrope_section=[2, 3, 3], vision_hidden=32, window=56)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    widen_init(model)
    return _save(model, out, _qwen2_preprocessor(112 * 224), "Qwen2.5-VL")


def _qwen2_vl(out: Path, seed: int) -> Path:
    """Qwen2-VL: Qwen2.5-VL's tokenizer, template and text model; its own vision tower
    (LayerNorm, fc1/fc2 MLP, full attention in every block, ``embed_dim`` and ``hidden_size``
    = the LLM width); no ``tokens_per_second`` (temporal ids are the patch index)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = build_tokenizer(out, SPECIAL_TOKENS, CHAT_TEMPLATE, "<|im_end|>", "<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 20,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    widen_init(model)
    return _save(model, out, _qwen2_preprocessor(112 * 224), "Qwen2-VL")


# Qwen3-VL / Qwen3.5 chat templates (hub: Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3.5-9B),
# condensed: the tool-calling and earlier-turn reasoning branches are left out.
_QWEN3_CONTENT = (
    "{%- macro render_content(content) %}{%- if content is string %}{{- content }}"
    "{%- else %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\n' + render_content(messages[0].content) + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}"
    "{{- '<|im_start|>user\n' + render_content(message.content) + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' + render_content(message.content) + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
)
QWEN3_VL_TEMPLATE = _QWEN3_CONTENT + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
QWEN3_5_TEMPLATE = _QWEN3_CONTENT + (
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}"
    "{%- else %}{{- '<think>\n' }}{%- endif %}{%- endif %}")
QWEN3_SPECIAL_TOKENS = SPECIAL_TOKENS + ["<think>", "</think>"]


def _qwen3_vision(**extra):
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                num_position_embeddings=64, in_channels=3, **extra)


# family -> (config class, model class, name); the MoE variants differ in their text MLPs only
_QWEN3_CLASSES = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3-VL"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration", "Qwen3-VL-MoE"),
    "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration", "Qwen3.5"),
    "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration", "Qwen3.5-MoE"),
}


def _qwen3(out: Path, seed: int, family: str) -> Path:
    import torch
    import transformers

    vl = family.startswith("qwen3_vl")
    template = QWEN3_VL_TEMPLATE if vl else QWEN3_5_TEMPLATE
    tok = build_tokenizer(out, QWEN3_SPECIAL_TOKENS, template, "<|im_end|>", "<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN3_SPECIAL_TOKENS}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                max_position_embeddings=1 << 20, tie_word_embeddings=False,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    cfg_cls, model_cls, name = _QWEN3_CLASSES[family]
    if vl:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6,
                                   "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        vision = _qwen3_vision(deepstack_visual_indexes=[0, 1])
    else:  # hybrid: Gated DeltaNet (linear) and full-attention layers
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.5,
                                     "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                    layer_types=["linear_attention", "full_attention", "full_attention", "linear_attention"],
                    linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8,
                    linear_num_key_heads=2, linear_num_value_heads=4)
        vision = _qwen3_vision()
    if family == "qwen3_vl_moe":  # every layer sparse (decoder_sparse_step 1), as released
        text.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    elif family == "qwen3_5_moe":  # routed experts plus a shared expert, no dense MLP
        del text["intermediate_size"]
        text.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                    shared_expert_intermediate_size=32)
    config = getattr(transformers, cfg_cls)(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    widen_init(model)
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": 16,
           "temporal_patch_size": 2, "merge_size": 2,
           "size": {"shortest_edge": 64 * 64, "longest_edge": 128 * 256}}
    (out / "video_preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return _save(model, out, pre, name)


def _qwen2_text(vocab: int, ids: dict, hidden: int = 64) -> dict:
    """The tiny Qwen2 language model of the InternVL and LLaVA-OneVision checkpoints."""
    return dict(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1 << 20, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


# InternVL's chat template (transformers' convert_internvl_weights_to_hf.py, as the
# OpenGVLab/InternVL3-*-hf checkpoints have it) and its named special tokens.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)
INTERNVL_NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def _internvl(out: Path, seed: int) -> Path:
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
    tok = build_tokenizer(out, special, INTERNVL_CHAT_TEMPLATE, "<|im_end|>", "<|endoftext|>",
                          extra_special_tokens=INTERNVL_NAMED_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    config = InternVLConfig(  # Qwen2 LM (InternVL3); 112 px tiles: 8x8 patches -> 4x4 tokens
        text_config=_qwen2_text(len(tok), ids),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=112, patch_size=14),
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=16, downsample_ratio=0.5,
        tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    widen_init(model)
    return _save(model, out, {
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "size": {"height": 112, "width": 112}, "do_resize": True}, "InternVL")


# LLaVA-OneVision's chat template (transformers' convert_llava_onevision_weights_to_hf.py, as
# the llava-hf/*-hf checkpoints have it).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


LLAVA_ONEVISION_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def _llava_onevision_config(tok, hidden: int, vision_hidden: int, image_size: int):
    """A small LLaVA-OneVision config of the real layout (a Qwen2 LM of 4 layers, 4/2 heads;
    a 2-layer SigLIP tower of ``image_size`` px tiles, 14 px patches, features of the last
    layer, all patches), its special ids from ``tok``."""
    from transformers import LlavaOnevisionConfig
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_ONEVISION_SPECIAL_TOKENS}
    return LlavaOnevisionConfig(
        text_config=_qwen2_text(len(tok), ids, hidden),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
            num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14,
            vision_use_head=False),
        image_token_index=ids["<image>"], video_token_index=ids["<video>"],
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )


def _llava_onevision(out: Path, seed: int) -> Path:
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    tok = build_tokenizer(out, LLAVA_ONEVISION_SPECIAL_TOKENS, LLAVA_ONEVISION_CHAT_TEMPLATE,
                          "<|im_end|>", "<|endoftext|>")
    # 100 px SigLIP: 7x7 patches (as 384 px gives 27x27), pooled 4x4
    config = _llava_onevision_config(tok, hidden=64, vision_hidden=32, image_size=100)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    widen_init(model)
    with torch.no_grad():  # as a trained newline, on the scale of the token embeddings
        model.model.image_newline.normal_(0.0, 1.0)
    return _save(model, out, {
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"height": 100, "width": 100}, "do_resize": True}, "LLaVA-OneVision")


# GLM-4.1V's chat template (hub: zai-org/GLM-4.1V-9B-Thinking), condensed: system, user
# (video, image, text items) and assistant turns. GLM-4.6V's generation prompt also takes
# enable_thinking (an empty think block when it is false).
_GLM_TURNS = (  # {{ '\\n' }}: the templates' newlines, which trim_blocks would eat after a tag
    "[gMASK]<sop>{%- for msg in messages %}{%- if msg.role == 'system' %}<|system|>{{ '\\n' }}{{ msg.content }}"
    "{%- elif msg.role == 'user' %}<|user|>{{ '\\n' }}{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}{%- if item.type == 'video' or 'video' in item %}"
    "<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif item.type == 'image' or 'image' in item %}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- elif msg.role == 'assistant' %}<|assistant|>{{ '\\n' }}{{ msg.content }}{%- endif %}{%- endfor %}"
)
GLM4V_TEMPLATE = _GLM_TURNS + "{%- if add_generation_prompt %}<|assistant|>{{ '\\n' }}{%- endif %}"
GLM46V_TEMPLATE = _GLM_TURNS + (
    "{%- if add_generation_prompt %}<|assistant|>"
    "{%- if enable_thinking is defined and not enable_thinking %}{{ '\\n<think></think>' }}{%- endif %}{%- endif %}")
GLM_SPECIAL_TOKENS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
                      "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                      "<|end_of_video|>", "<|image|>", "<|video|>", "<think>", "</think>"]


def _glm4v(out: Path, seed: int, family: str) -> Path:
    import torch
    import transformers

    template = GLM4V_TEMPLATE if family == "glm4v" else GLM46V_TEMPLATE  # GLM-4.5V's as GLM-4.6V's
    tok = build_tokenizer(out, GLM_SPECIAL_TOKENS, template, "<|endoftext|>", "<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in GLM_SPECIAL_TOKENS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]  # as the hub's generation config
    text = {"model_type": "glm4v_text", "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 1 << 20, "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5,
                                "mrope_section": [2, 1, 1]}}
    vision = {"model_type": "glm4v_vision", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
              "num_heads": 2, "out_hidden_size": 64, "image_size": 56, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    cls, name = {"glm4v": (("Glm4vConfig", "Glm4vForConditionalGeneration"), "GLM-4.1V"),
                 "glm46v": (("Glm46VConfig", "Glm46VForConditionalGeneration"), "GLM-4.6V"),
                 "glm4v_moe": (("Glm4vMoeConfig", "Glm4vMoeForConditionalGeneration"), "GLM-4.5V")}[family]
    if family == "glm4v_moe":  # a dense first layer, then routed experts and a shared one
        text.update(model_type="glm4v_moe_text", n_routed_experts=8, num_experts_per_tok=2,
                    moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1)
        vision["model_type"] = "glm4v_moe_vision"
    config = getattr(transformers, cls[0])(
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"])
    torch.manual_seed(seed)
    model = getattr(transformers, cls[1])(config).eval()
    model.generation_config.eos_token_id = eos
    widen_init(model)
    pre = {"image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711], "patch_size": 14,
           "temporal_patch_size": 2, "merge_size": 2,
           "size": {"shortest_edge": 112 * 112, "longest_edge": 2 * 112 * 224}}
    (out / "video_preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return _save(model, out, pre, name)


# Gemma 4's chat template (hub: google/gemma-4-E2B-it), condensed: turns and the image,
# video and text items; no system-prompt thinking switch (thinking is off unless asked for).
GEMMA4_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages %}"
    "<|turn>{{ 'model' if message.role == 'assistant' else message.role }}{{ '\\n' }}"
    "{%- if message.content is string %}{{ message.content }}{%- else %}{%- for item in message.content %}"
    "{%- if item.type == 'image' %}<|image|>{%- elif item.type == 'video' %}<|video|>"
    "{%- elif item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}{%- endif %}<turn|>{{ '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}<|turn>model{{ '\\n' }}{%- endif %}"
)
GEMMA4_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|image>", "<image|>",
                         "<|image|>", "<|video|>", "<|audio>", "<audio|>", "<|audio|>"]


def _gemma4(out: Path, seed: int) -> Path:
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    tok = build_tokenizer(out, GEMMA4_SPECIAL_TOKENS, GEMMA4_TEMPLATE, "<eos>", "<pad>", bos_token="<bos>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA4_SPECIAL_TOKENS}
    eos = [ids["<eos>"], ids["<turn|>"]]  # as the hub's generation config
    # 6 layers, global ones at 2 and 5 (round(0.7 * 6) = 4 is a sliding one); a window of 8
    # keys, so the sliding layers' text queries miss the early frames; frames attend to
    # themselves bidirectionally (the larger checkpoints' "vision" setting); per-layer
    # embeddings as the E2B / E4B checkpoints have
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "global_head_dim": 32,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
            "sliding_window": 8, "use_bidirectional_attention": "vision", "final_logit_softcapping": 30.0,
            "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": len(tok),
            "max_position_embeddings": 1 << 20, "pad_token_id": ids["<pad>"], "eos_token_id": eos,
            "bos_token_id": ids["<bos>"]}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "pooling_kernel_size": 3,
              "position_embedding_size": 64}
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"], boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"],
        audio_token_id=ids["<|audio|>"])
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = eos
    widen_init(model)
    pre = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], "patch_size": 16,
           "pooling_kernel_size": 3, "max_soft_tokens": 70}
    (out / "video_preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return _save(model, out, pre, "Gemma 4")


# HF model_type -> builder(out_dir, seed) writing a loadable checkpoint into out_dir
FAMILIES = {
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen2_vl": _qwen2_vl,
    "qwen3_vl": lambda out, seed: _qwen3(out, seed, "qwen3_vl"),
    "qwen3_5": lambda out, seed: _qwen3(out, seed, "qwen3_5"),
    "qwen3_vl_moe": lambda out, seed: _qwen3(out, seed, "qwen3_vl_moe"),
    "qwen3_5_moe": lambda out, seed: _qwen3(out, seed, "qwen3_5_moe"),
    "glm4v": lambda out, seed: _glm4v(out, seed, "glm4v"),
    "glm46v": lambda out, seed: _glm4v(out, seed, "glm46v"),
    "glm4v_moe": lambda out, seed: _glm4v(out, seed, "glm4v_moe"),
    "gemma4": _gemma4,
    "internvl": _internvl,
    "llava_onevision": _llava_onevision,
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family: no tiny model for {family!r} "
                         f"(available: {', '.join(sorted(FAMILIES))})")


def build_tiny_model(out: Path, family: str = DEFAULT_FAMILY, seed: int = 0) -> Path:
    """Write the tiny ``family`` checkpoint (config, random weights, tokenizer, preprocessor
    config) to ``out``.

    Raises:
        ValueError: naming ``family`` when no tiny model of that ``model_type`` exists.
    """
    _check_family(family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return FAMILIES[family](out, seed)


def ensure_tiny_model(family: str = DEFAULT_FAMILY) -> Path:
    """The tiny ``family`` checkpoint (HF ``model_type``), built on first use atomically (a
    temp dir renamed into place).

    Raises:
        ValueError: naming ``family`` when no tiny model of that ``model_type`` exists.
    """
    _check_family(family)
    final = tiny_model_dir(family)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        build_tiny_model(tmp, family)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- the trained needle checkpoint (tools/train_needle_model.py) -----------------------------

NEEDLE_FAMILIES = ("qwen2_5_vl", "llava_onevision")
_DATA = Path(__file__).resolve().parent.parent / "data"


def needle_model_id(family: str = DEFAULT_FAMILY) -> str:
    """The name the trained needle checkpoint goes by (``--model`` and results)."""
    return f"adapttoken/needle-{family}"


def _check_needle_family(family: str) -> None:
    if family not in NEEDLE_FAMILIES:
        raise ValueError(f"family: no needle checkpoint for {family!r} "
                         f"(available: {', '.join(NEEDLE_FAMILIES)})")


def needle_weights_path(family: str = DEFAULT_FAMILY) -> Path:
    """The committed weights of the trained needle checkpoint of ``family``
    (``adapttoken_ext/data/needle-<family>.safetensors``; README "Needle checkpoint")."""
    return _DATA / f"needle-{family}.safetensors"


def _needle_qwen2_5_vl(out: Path, corpus: str):
    """Qwen2.5-VL at the needle size (text hidden 128; vision hidden 64, window 112 px) on
    frames resized with ``NEEDLE_MAX_PIXELS`` (56 x 112 px, 2 x 4 tokens per unit)."""
    from ..niah import NEEDLE_MAX_PIXELS
    tok = build_tokenizer(out, SPECIAL_TOKENS, CHAT_TEMPLATE, "<|im_end|>", "<|endoftext|>",
                          corpus=corpus, vocab_size=1000)
    # head_dim 32: 16 rotary frequencies split (T, H, W) as Qwen2.5-VL's [16, 24, 24] of 64
    config = _qwen2_5_vl_config(tok, hidden=128, mrope_section=[4, 6, 6], vision_hidden=64, window=112)
    pre = _qwen2_preprocessor(NEEDLE_MAX_PIXELS)
    readme = ("Tiny Qwen2.5-VL TRAINED on the needle-in-a-haystack task of adapttoken_ext.niah\n"
              "(tools/train_needle_model.py). It answers only the built-in needle questions, on\n"
              f"frames resized with max_pixels={NEEDLE_MAX_PIXELS} (56 x 112 px).\n")
    return config, "Qwen2_5_VLForConditionalGeneration", pre, readme


def _needle_llava_onevision(out: Path, corpus: str):
    """LLaVA-OneVision at the needle size (text hidden 128; SigLIP hidden 64) on square
    ``NEEDLE_TILE`` px tiles (56: 4 x 4 patches pooled to 2 x 2 tokens per frame)."""
    from ..niah import NEEDLE_TILE
    tok = build_tokenizer(out, LLAVA_ONEVISION_SPECIAL_TOKENS, LLAVA_ONEVISION_CHAT_TEMPLATE,
                          "<|im_end|>", "<|endoftext|>", corpus=corpus, vocab_size=1000)
    config = _llava_onevision_config(tok, hidden=128, vision_hidden=64, image_size=NEEDLE_TILE)
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
           "size": {"height": NEEDLE_TILE, "width": NEEDLE_TILE}, "do_resize": True}
    readme = ("Tiny LLaVA-OneVision TRAINED on the needle-in-a-haystack task of adapttoken_ext.niah\n"
              "(tools/train_needle_model.py). It answers only the built-in needle questions, on\n"
              f"frames resized to {NEEDLE_TILE} x {NEEDLE_TILE} px.\n")
    return config, "LlavaOnevisionForConditionalGeneration", pre, readme


# family -> builder(out, corpus) of (config, model class name, preprocessor config, README text)
_NEEDLE_BUILDERS = {"qwen2_5_vl": _needle_qwen2_5_vl, "llava_onevision": _needle_llava_onevision}


def build_needle_model(out: Path, family: str = DEFAULT_FAMILY, weights: Path | None = None,
                       seed: int = 0):
    """Write the needle ``family`` checkpoint to ``out``: the architecture of
    :func:`build_tiny_model` at the trained size (text hidden 128, 4 layers, 4 query / 2 KV
    heads; a 2-layer vision tower of hidden 64: Qwen2.5-VL with a 112 px window on 56 x 112 px
    frames, LLaVA-OneVision on 56 px tiles), the same offline tokenizer and chat template,
    and ``weights`` (a safetensors state dict; None: a seeded random init, the start of
    training). Returns the model (fp32, eval mode).

    Raises:
        ValueError: naming ``family`` when it has no needle checkpoint; naming ``weights``
            when they do not fit the architecture.
    """
    import torch
    import transformers

    from ..config import MC_INSTRUCTION
    from ..niah import KINDS
    _check_needle_family(family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the needle prompts in the corpus: whole words become single tokens, so a prompt is
    # about 50 tokens instead of 100 (training time goes with the sequence length)
    corpus = "\n".join([_CORPUS, "system user assistant", MC_INSTRUCTION]
                       + [k.question + "\n" + "\n".join(k.options) for k in KINDS.values()])
    config, model_class, preprocessor, readme = _NEEDLE_BUILDERS[family](out, corpus)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    if weights is not None:
        from safetensors.torch import load_file
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights: {str(weights)!r} do not fit the needle architecture ({e})") from None
    model.eval()
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    (out / "README.md").write_text(readme)
    return model


def needle_model_dir(family: str = DEFAULT_FAMILY) -> Path:
    """Where the needle checkpoint is built: ``$ADAPTTOKEN_CACHE`` or the user cache dir,
    named by the committed weights' sha256 (new weights, a new directory)."""
    import hashlib
    digest = hashlib.sha256(needle_weights_path(family).read_bytes()).hexdigest()
    return tiny_model_dir(family).parent / f"needle-{family}-{digest[:16]}"


def ensure_needle_model(family: str = DEFAULT_FAMILY) -> Path:
    """A loadable checkpoint directory of the trained needle model of ``family``, built on
    first use (atomically) from the committed weights (:func:`needle_weights_path`) and
    the generated config and tokenizer.

    Raises:
        ValueError: naming ``family`` when it has no needle checkpoint.
        FileNotFoundError: the committed weights are missing from the installation.
    """
    _check_needle_family(family)
    weights = needle_weights_path(family)
    if not weights.is_file():
        raise FileNotFoundError(f"needle checkpoint: weights {str(weights)!r} missing from the installation")
    final = needle_model_dir(family)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        build_needle_model(tmp, family, weights)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
