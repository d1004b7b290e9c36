// Calls torch.ops.adapttoken.* from C++ through the dispatcher, as a libtorch
// program would. Built by CMakeLists.txt; exits non-zero if a check fails.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <iostream>
#include <optional>
#include <tuple>

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();

  // softmax_entropy of uniform logits over K = 4 options is ln 4.
  auto entropy = dispatcher.findSchemaOrThrow("adapttoken::softmax_entropy", "")
                     .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                       double)>();
  const at::Tensor h = entropy.call(at::zeros({2, 4}), std::nullopt, 1.0);
  std::cout << "softmax_entropy(uniform over 4) = " << h[0].item<float>() << " (ln 4 = "
            << std::log(4.0) << ")\n";
  if (std::abs(h[0].item<double>() - std::log(4.0)) > 1e-5) return 1;

  // select: keep the 3 best keys of each of two groups of visual keys.
  auto select = dispatcher.findSchemaOrThrow("adapttoken::select", "")
                    .typed<std::tuple<at::Tensor, at::Tensor>(
                        const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                        const at::Tensor&, double, c10::string_view)>();
  at::manual_seed(0);
  const at::Tensor query = at::randn({1, 28, 8, 128}).to(at::kBFloat16);  // Hq = 28
  const at::Tensor key = at::randn({1, 4, 200, 128}).to(at::kBFloat16);   // Hkv = 4 (GQA)
  const at::Tensor offsets = at::tensor(std::vector<int64_t>{10, 100, 190});
  const at::Tensor budgets = at::tensor(std::vector<int64_t>{3, 3});
  auto [indices, scores] = select.call(query, key, 0, offsets, budgets, 1.0 / std::sqrt(128.0),
                                       "max");
  std::cout << "select indices: " << indices << "\nselect scores: " << scores << "\n";
  if (indices.numel() != 6 || !(indices.slice(0, 1).gt(indices.slice(0, 0, 5))).all().item<bool>())
    return 1;
  std::cout << "ok\n";
  return 0;
}
