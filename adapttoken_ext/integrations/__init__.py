"""Integrations with evaluation frameworks (optional dependencies, imported on use)."""


def lmms_eval_manifest():
    """The ``lmms_eval.models`` entry point's payload: lmms-eval's ``ModelManifest`` for
    ``--model adapttoken`` (:mod:`adapttoken_ext.integrations.lmms_eval`). A function, so
    that lmms-eval's registry and the plug-in module can be imported in either order."""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id="adapttoken",
                         simple_class_path="adapttoken_ext.integrations.lmms_eval.AdaptTokenLMMS")
