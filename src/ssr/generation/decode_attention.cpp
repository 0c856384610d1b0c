// Decode-step attention over a slotted KV cache (ssr.generation.decode_attention).
//
// One query token per slot; the query heads that share a key/value head (grouped-query attention)
// are computed together, so each cached key and value row is read once per step for all of them.
// Slot i attends its own positions 0..pos[i] only: a short sequence never pays for the longest
// one's span. Scores, softmax and the weighted sum accumulate in fp32 whatever the cache dtype.
// Built at run time for this machine's instruction sets (-O3, vectorised by the compiler).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kMaxGroup = 16;

// A cached row of D elements as fp32 (vectorised conversion from bf16/fp16).
template <typename T, int D>
inline void load_row(const T* row, float* out) {
#pragma omp simd
  for (int j = 0; j < D; ++j) out[j] = static_cast<float>(row[j]);
}

// One (slot, kv head): q [G, D], keys/values rows 0..span-1 (row stride `stride`), out [G, D].
template <typename T, int D>
void attend(const T* q, const T* k, const T* v, int64_t G, int64_t span, int64_t stride, float scale, T* out,
            float* scores) {
  float qf[kMaxGroup][D];
  for (int64_t g = 0; g < G; ++g)
    for (int j = 0; j < D; ++j) qf[g][j] = static_cast<float>(q[g * D + j]) * scale;
  for (int64_t t = 0; t < span; ++t) {
    float kf[D];
    load_row<T, D>(k + t * stride, kf);
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int j = 0; j < D; ++j) s += qf[g][j] * kf[j];
      scores[g * span + t] = s;
    }
  }
  float acc[kMaxGroup][D];
  float inv[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores + g * span;
    float top = -INFINITY;
    for (int64_t t = 0; t < span; ++t) top = std::max(top, s[t]);
    float sum = 0.f;
    for (int64_t t = 0; t < span; ++t) {
      s[t] = std::exp(s[t] - top);
      sum += s[t];
    }
    inv[g] = 1.f / sum;
    for (int j = 0; j < D; ++j) acc[g][j] = 0.f;
  }
  for (int64_t t = 0; t < span; ++t) {
    float vf[D];
    load_row<T, D>(v + t * stride, vf);
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * span + t];
#pragma omp simd
      for (int j = 0; j < D; ++j) acc[g][j] += p * vf[j];
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int j = 0; j < D; ++j) out[g * D + j] = static_cast<T>(acc[g][j] * inv[g]);
}

template <typename T, int D>
void run(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values, const int64_t* pos,
         torch::Tensor& out) {
  const int64_t n = q.size(0), kv = q.size(1), G = q.size(2);
  const T* qp = q.data_ptr<T>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t slot = keys.stride(0), head = keys.stride(1), stride = keys.stride(2);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  int64_t longest = 0;
  for (int64_t s = 0; s < n; ++s) longest = std::max(longest, pos[s] + 1);
  at::parallel_for(0, n * kv, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scores(G * longest);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t s = i / kv, h = i % kv;
      const int64_t offset = s * slot + h * head;
      attend<T, D>(qp + i * G * D, kp + offset, vp + offset, G, pos[s] + 1, stride, scale, op + i * G * D,
                   scores.data());
    }
  });
}

template <typename T>
void dispatch_dim(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                  const int64_t* pos, torch::Tensor& out) {
  switch (q.size(3)) {
    case 64: return run<T, 64>(q, keys, values, pos, out);
    case 128: return run<T, 128>(q, keys, values, pos, out);
    case 96: return run<T, 96>(q, keys, values, pos, out);
    case 80: return run<T, 80>(q, keys, values, pos, out);
    case 32: return run<T, 32>(q, keys, values, pos, out);
    case 16: return run<T, 16>(q, keys, values, pos, out);  // the tests' tiny models
    default: TORCH_CHECK(false, "decode_attention: head dim ", q.size(3), " is not compiled (16/32/64/80/96/128)");
  }
}

}  // namespace

// q [n, kv, G, D]; keys/values [slots >= n, kv, L, D] (rows of a dim contiguous); pos [n] int64:
// slot i attends positions 0..pos[i]. Returns [n, kv, G, D] in q's dtype.
torch::Tensor decode_attention(const torch::Tensor& q_in, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& pos_in) {
  TORCH_CHECK(q_in.dim() == 4 && keys.dim() == 4 && values.dim() == 4, "decode_attention: 4-d tensors");
  TORCH_CHECK(keys.strides() == values.strides() && keys.sizes() == values.sizes(), "keys/values layouts differ");
  TORCH_CHECK(keys.stride(3) == 1 && keys.size(3) == q_in.size(3), "cache rows must be contiguous, dims equal");
  TORCH_CHECK(keys.size(0) >= q_in.size(0) && keys.size(1) == q_in.size(1), "slots/heads of q vs the cache");
  TORCH_CHECK(q_in.size(2) <= kMaxGroup, "decode_attention: at most ", kMaxGroup, " query heads per kv head");
  TORCH_CHECK(q_in.scalar_type() == keys.scalar_type() && keys.scalar_type() == values.scalar_type(),
              "q, keys and values must share a dtype");
  const auto q = q_in.contiguous();
  const auto pos = pos_in.to(torch::kLong).contiguous();
  TORCH_CHECK(pos.numel() == q.size(0), "one position per slot");
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t s = 0; s < pos.numel(); ++s)
    TORCH_CHECK(pp[s] >= 0 && pp[s] < keys.size(2), "position ", pp[s], " outside the cache");
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention",
                                  [&] { dispatch_dim<scalar_t>(q, keys, values, pp, out); });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
