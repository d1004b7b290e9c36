// Schemas of torch.ops.adapttoken.*. The Python fallback (adapttoken_ext/_library.py)
// defines the same strings when this library cannot load; a test checks they match.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(adapttoken, m) {
  m.def("attention_scores(Tensor query, Tensor key, int query_start, int visual_start, "
        "int visual_end, float scale, str reduce=\"max\") -> Tensor");
  m.def("segmented_topk(Tensor scores, Tensor offsets, Tensor k, bool sort_by_index=True) "
        "-> (Tensor values, Tensor indices)");
  m.def("softmax_entropy(Tensor logits, Tensor? index=None, float temperature=1.0) -> Tensor");
  m.def("select(Tensor query, Tensor key, int query_start, Tensor visual_offsets, "
        "Tensor budgets, float scale, str reduce=\"max\") -> (Tensor indices, Tensor scores)");
  m.def("local_entropy(Tensor tokens, int window=3, float temperature=0.1) -> Tensor");
}
