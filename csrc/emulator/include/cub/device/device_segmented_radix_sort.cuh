// Emulator stand-in for cub::DeviceSegmentedRadixSort::SortPairs / SortPairsDescending,
// with CUB 3.0's signature (CUDA 13): num_items and num_segments are `int`, so a caller's
// int64 count narrows here exactly as it does with the real CUB. It checks what CUB
// requires and a wrong call gets wrong silently on a GPU: the size query's bytes are
// enough, counts and bits are in range, segments lie in [0, num_items), and outputs do
// not alias inputs. The temp storage is filled with garbage first. Stable, as CUB's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "../../cuda_runtime.h"

namespace cub {

struct DeviceSegmentedRadixSort {
  template <typename K, typename V, typename BeginIt, typename EndIt>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               const K* d_keys_in, K* d_keys_out, const V* d_values_in,
                               V* d_values_out, int num_items, int num_segments,
                               BeginIt d_begin_offsets, EndIt d_end_offsets, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    return sort(false, d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                d_values_out, num_items, num_segments, d_begin_offsets, d_end_offsets, begin_bit,
                end_bit);
  }

  template <typename K, typename V, typename BeginIt, typename EndIt>
  static cudaError_t SortPairsDescending(void* d_temp_storage, size_t& temp_storage_bytes,
                                         const K* d_keys_in, K* d_keys_out, const V* d_values_in,
                                         V* d_values_out, int num_items, int num_segments,
                                         BeginIt d_begin_offsets, EndIt d_end_offsets,
                                         int begin_bit = 0, int end_bit = sizeof(K) * 8,
                                         cudaStream_t = nullptr) {
    return sort(true, d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                d_values_out, num_items, num_segments, d_begin_offsets, d_end_offsets, begin_bit,
                end_bit);
  }

 private:
  static size_t required_bytes(int num_items, int num_segments) {
    return 256 + 8 * size_t(num_items) + 8 * size_t(num_segments);
  }

  template <typename K, typename V, typename BeginIt, typename EndIt>
  static cudaError_t sort(bool descending, void* temp, size_t& bytes, const K* keys_in,
                          K* keys_out, const V* values_in, V* values_out, int num_items,
                          int num_segments, BeginIt begin, EndIt end, int begin_bit,
                          int end_bit) {
    if (num_items < 0 || num_segments < 0 || begin_bit < 0 || end_bit > int(sizeof(K) * 8) ||
        begin_bit >= end_bit)
      return cudaErrorInvalidValue;
    if (temp == nullptr) {
      bytes = required_bytes(num_items, num_segments);
      return cudaSuccess;
    }
    if (bytes < required_bytes(num_items, num_segments)) return cudaErrorInvalidValue;
    std::memset(temp, 0xff, bytes);
    if (num_items == 0) return cudaSuccess;
    const auto overlaps = [&](const void* a, size_t na, const void* b, size_t nb) {
      const char *x = static_cast<const char*>(a), *y = static_cast<const char*>(b);
      return x < y + nb && y < x + na;
    };
    const size_t nk = sizeof(K) * size_t(num_items), nv = sizeof(V) * size_t(num_items);
    if (overlaps(keys_in, nk, keys_out, nk) || overlaps(values_in, nv, values_out, nv) ||
        overlaps(temp, bytes, keys_out, nk) || overlaps(temp, bytes, values_out, nv))
      return cudaErrorInvalidValue;
    const int width = end_bit - begin_bit;
    const auto digit = [&](K k) {
      const uint64_t u = uint64_t(k) >> begin_bit;
      return width >= 64 ? u : u & ((uint64_t(1) << width) - 1);
    };
    for (int s = 0; s < num_segments; ++s) {
      const int64_t b = int64_t(begin[s]), e = int64_t(end[s]);
      if (b >= e) continue;  // CUB: an empty segment
      if (b < 0 || e > num_items) return cudaErrorInvalidValue;
      std::vector<int64_t> order(size_t(e - b));
      std::iota(order.begin(), order.end(), b);
      std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
        return descending ? digit(keys_in[i]) > digit(keys_in[j]) : digit(keys_in[i]) < digit(keys_in[j]);
      });
      for (int64_t i = b; i < e; ++i) {
        keys_out[i] = keys_in[order[size_t(i - b)]];
        values_out[i] = values_in[order[size_t(i - b)]];
      }
    }
    return cudaSuccess;
  }
};

}  // namespace cub
