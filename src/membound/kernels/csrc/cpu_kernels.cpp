// membound's native CPU kernels (built on first use by kernels/cpu_native.py).
//
// Each has a plain-torch reference (named in cpu_native.py) and a test against it. They
// exist because the torch formulations move the same bytes several times: decode attention
// gathers every sequence's K/V into fresh tensors before reading them again, and RMSNorm /
// rotary / SiLU-and-mul in torch are 4-10 separate passes with float32 temporaries. Here each
// is one pass over its inputs, parallel over rows (at::parallel_for, torch's OpenMP pool).
//
// Numerics: float32 accumulation throughout; RMSNorm follows Hugging Face (normalise in
// float32, round to the input dtype, multiply by the weight in the input dtype).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline float to_f(T x) { return static_cast<float>(x); }

template <typename T>
inline T from_f(float x) { return static_cast<T>(x); }

inline uint32_t f2u(float x) { return __builtin_bit_cast(uint32_t, x); }
inline float u2f(uint32_t u) { return __builtin_bit_cast(float, u); }

// bf16 round-to-nearest-even on the bit pattern, written so loops over it vectorise
// (NaN inputs are not expected here: they would come out as +-inf or NaN).
inline uint32_t bf16_round_bits(float x) {
  const uint32_t u = f2u(x);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
}

// Convert n values of T to float32.
template <typename T>
inline void load_f(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f(src[i]);
}
template <>
inline void load_f<float>(const float* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}
template <>
inline void load_f<c10::BFloat16>(const c10::BFloat16* __restrict src, float* __restrict dst,
                                  int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = u2f(static_cast<uint32_t>(s[i]) << 16);
}

// Round n float32 values to T's precision, in place (what storing to T and reading back does).
template <typename T>
inline void round_to(float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = to_f(from_f<T>(x[i]));
}
template <>
inline void round_to<float>(float* __restrict, int64_t) {}
template <>
inline void round_to<c10::BFloat16>(float* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = u2f(bf16_round_bits(x[i]));
}

// Store n float32 values as T (rounded to nearest even).
template <typename T>
inline void store_f(const float* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_f<T>(src[i]);
}
template <>
inline void store_f<float>(const float* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}
template <>
inline void store_f<c10::BFloat16>(const float* __restrict src, c10::BFloat16* __restrict dst,
                                   int64_t n) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint16_t>(bf16_round_bits(src[i]) >> 16);
}

// exp(x) for float32 in a form loops vectorise (Cephes' expf polynomial after reducing by
// ln 2; within 2 ulp of expf over the clamped range; exp(-inf) comes out as ~1e-38, not 0).
inline float exp_f(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln 2): adding and taking away 1.5 * 2^23 rounds to an integer in float
  // arithmetic (std::floor would keep the loop from vectorising)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * u2f(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

#if defined(__AVX512F__)
#include <immintrin.h>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16)
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
#else
// 16 independent lanes so the compiler vectorises without reassociating one float sum
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float lanes[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) lanes[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += lanes[j];
  return s;
}
#endif

#if defined(__AVX512F__)
// The horizontal sums of 16 vectors as one vector (lane t = the sum of v[t]'s lanes): a
// transpose-and-add tree instead of 16 separate reductions.
inline __m512 hsum16(const __m512* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: (a0+a2, b0+b2, a1+a3, b1+b3)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: tokens 4i..4i+3, that lane's partial
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                                  _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                                  _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xDD));
}
#endif

// scores[g * ld + t] = q_g . k_t for the nt K rows at kb (row stride s_tok), G queries of D.
// kbuf: 16 * D floats of scratch.
template <typename T>
inline void block_scores(const float* q, int64_t G, int64_t D, const T* kb, int64_t s_tok,
                         int64_t nt, float* kbuf, float* scores, int64_t ld) {
#if defined(__AVX512F__)
  if (D % 16 == 0) {
    for (int64_t c0 = 0; c0 < nt; c0 += 16) {
      const int64_t n = std::min<int64_t>(16, nt - c0);
      for (int64_t t = 0; t < n; ++t) load_f(kb + (c0 + t) * s_tok, kbuf + t * D, D);
      for (int64_t g = 0; g < G; ++g) {
        __m512 v[16];
        for (int64_t t = 0; t < 16; ++t) {
          __m512 acc = _mm512_setzero_ps();
          if (t < n)
            for (int64_t c = 0; c < D; c += 16)
              acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + c),
                                    _mm512_loadu_ps(kbuf + t * D + c), acc);
          v[t] = acc;
        }
        _mm512_mask_storeu_ps(scores + g * ld + c0, static_cast<__mmask16>((1u << n) - 1u),
                              hsum16(v));
      }
    }
    return;
  }
#endif
  for (int64_t t = 0; t < nt; ++t) {
    load_f(kb + t * s_tok, kbuf, D);
    for (int64_t g = 0; g < G; ++g) scores[g * ld + t] = dot(q + g * D, kbuf, D);
  }
}

#if defined(__AVX512F__)
template <typename T>
inline __m512 load16(const T* p) {  // any other dtype (double): through float
  alignas(64) float f[16];
  for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(p[i]);
  return _mm512_load_ps(f);
}
template <>
inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
inline __m512 load16<c10::BFloat16>(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16<c10::Half>(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// acc[g] += sum_t scores[g * ld + t] * V_t for G heads of C * 16 floats, the G x C
// accumulators held in registers over the block's rows (one load and store per block).
template <typename T, int G, int C>
inline void accumulate_v_fixed(float* acc, const float* scores, int64_t ld, const T* vb,
                               int64_t s_tok, int64_t nt) {
  __m512 a[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) a[g][c] = _mm512_loadu_ps(acc + (g * C + c) * 16);
  for (int64_t t = 0; t < nt; ++t) {
    const T* row = vb + t * s_tok;
    __m512 v[C];
    for (int c = 0; c < C; ++c) v[c] = load16<T>(row + c * 16);
    for (int g = 0; g < G; ++g) {
      const __m512 pv = _mm512_set1_ps(scores[g * ld + t]);
      for (int c = 0; c < C; ++c) a[g][c] = _mm512_fmadd_ps(pv, v[c], a[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + (g * C + c) * 16, a[g][c]);
}
#endif

// acc [G, D] += scores [G, ld] (first nt columns) @ V rows at vb (row stride s_tok).
template <typename T>
inline void accumulate_v(float* acc, const float* scores, int64_t ld, const T* vb,
                         int64_t s_tok, int64_t nt, int64_t G, int64_t D, float* vrow) {
#if defined(__AVX512F__)
#define MB_V_CASE(GG, CC)                                                         \
  if (G == GG && D == CC * 16) {                                                  \
    accumulate_v_fixed<T, GG, CC>(acc, scores, ld, vb, s_tok, nt);               \
    return;                                                                       \
  }
  MB_V_CASE(1, 4) MB_V_CASE(2, 4) MB_V_CASE(3, 4) MB_V_CASE(4, 4)
  MB_V_CASE(5, 4) MB_V_CASE(6, 4) MB_V_CASE(7, 4) MB_V_CASE(8, 4)
  MB_V_CASE(1, 8) MB_V_CASE(2, 8) MB_V_CASE(3, 8) MB_V_CASE(4, 8)
#undef MB_V_CASE
#endif
  for (int64_t t = 0; t < nt; ++t) {
    load_f(vb + t * s_tok, vrow, D);
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * ld + t];
      float* a = acc + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p * vrow[d];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Decode attention over the paged cache, read in place.
//
// query [S, H, D]; kv_cache [2, num_blocks, block_size, KVH, D]; block_tables [S, max_blocks]
// int32; seq_lens [S] (int32/int64): query s attends keys [max(0, len - window), len).
// One task per (sequence, KV head): its G = H / KVH query heads share each K/V row read.
// Per block: the block's scores for the G heads, one rescale of the running sums, then V.
template <typename T, typename IdxT>
void decode_attention_impl(const at::Tensor& query, const at::Tensor& kv_cache,
                           const at::Tensor& block_tables, const at::Tensor& seq_lens,
                           double scale, int64_t sliding_window, at::Tensor& out) {
  const int64_t S = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t BS = kv_cache.size(2), KVH = kv_cache.size(3);
  const int64_t G = H / KVH;
  const int64_t max_blocks = block_tables.size(1);
  const T* q_ptr = query.data_ptr<T>();
  const T* k_base = kv_cache.data_ptr<T>();
  const int64_t cache_half = kv_cache.stride(0);
  const T* v_base = k_base + cache_half;
  const int64_t s_blk = kv_cache.stride(1), s_tok = kv_cache.stride(2), s_head = kv_cache.stride(3);
  const IdxT* bt = block_tables.data_ptr<IdxT>();
  const IdxT* lens = seq_lens.data_ptr<IdxT>();
  T* o_ptr = out.data_ptr<T>();
  const int64_t qs0 = query.stride(0), qs1 = query.stride(1);
  const int64_t os0 = out.stride(0), os1 = out.stride(1);
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, S * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(G * D), acc(G * D), krow(D), kbuf(16 * D), scores(G * BS), m(G), l(G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / KVH, kvh = task % KVH;
      const int64_t len = static_cast<int64_t>(lens[s]);
      T* o_rows = o_ptr + s * os0 + kvh * G * os1;
      if (len <= 0) {  // a padding row: zeros
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t g = 0; g < G; ++g) store_f(acc.data(), o_rows + g * os1, D);
        continue;
      }
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, len - sliding_window) : 0;
      for (int64_t g = 0; g < G; ++g) {
        load_f(q_ptr + s * qs0 + (kvh * G + g) * qs1, q.data() + g * D, D);
        for (int64_t d = 0; d < D; ++d) q[g * D + d] *= fscale;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      const IdxT* table = bt + s * max_blocks;
      for (int64_t b = first / BS; b * BS < len; ++b) {
        const int64_t blk = static_cast<int64_t>(table[b]);
        const int64_t t0 = std::max(b * BS, first), t1 = std::min((b + 1) * BS, len);
        const int64_t nt = t1 - t0;
        const T* kb = k_base + blk * s_blk + kvh * s_head;
        const T* vb = v_base + blk * s_blk + kvh * s_head;
        if ((b + 1) * BS < len) {  // the next block's rows: scattered blocks defeat prefetchers
          const int64_t next = static_cast<int64_t>(table[b + 1]);
          const char* nk = reinterpret_cast<const char*>(k_base + next * s_blk + kvh * s_head);
          const char* nv = reinterpret_cast<const char*>(v_base + next * s_blk + kvh * s_head);
          const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
          for (int64_t t = 0; t < BS; ++t)
            for (int64_t o = 0; o < row_bytes; o += 64) {
              __builtin_prefetch(nk + t * s_tok * static_cast<int64_t>(sizeof(T)) + o);
              __builtin_prefetch(nv + t * s_tok * static_cast<int64_t>(sizeof(T)) + o);
            }
        }
        block_scores(q.data(), G, D, kb + (t0 - b * BS) * s_tok, s_tok, nt, kbuf.data(),
                     scores.data(), BS);
        for (int64_t g = 0; g < G; ++g) {
          float bmax = m[g];
          for (int64_t t = 0; t < nt; ++t) bmax = std::max(bmax, scores[g * BS + t]);
          const float corr = std::exp(m[g] - bmax);  // exp(-inf) = 0 on the first block
          float* sg = scores.data() + g * BS;
#pragma omp simd
          for (int64_t t = 0; t < nt; ++t) sg[t] = exp_f(sg[t] - bmax);
          float sum = 0.f;
          for (int64_t t = 0; t < nt; ++t) sum += sg[t];
          l[g] = l[g] * corr + sum;
          m[g] = bmax;
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] *= corr;
        }
        accumulate_v(acc.data(), scores.data(), BS, vb + (t0 - b * BS) * s_tok, s_tok, nt, G, D,
                     krow.data());
      }
      for (int64_t g = 0; g < G; ++g) {
        const float inv = 1.f / l[g];
        float* a = acc.data() + g * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] *= inv;
        store_f(a, o_rows + g * os1, D);
      }
    }
  });
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& seq_lens,
                            double scale, int64_t sliding_window, at::Tensor out) {
  TORCH_CHECK(query.dim() == 3 && kv_cache.dim() == 5, "query [S, H, D], kv_cache [2, N, B, KVH, D]");
  TORCH_CHECK(query.stride(2) == 1 && kv_cache.stride(4) == 1 && out.stride(2) == 1,
              "the head dimension must be contiguous");
  TORCH_CHECK(query.scalar_type() == kv_cache.scalar_type() && out.scalar_type() == query.scalar_type(),
              "query, kv_cache and out must share a dtype");
  TORCH_CHECK(block_tables.is_contiguous() && seq_lens.is_contiguous() &&
              block_tables.scalar_type() == seq_lens.scalar_type() &&
              (seq_lens.scalar_type() == at::kLong || seq_lens.scalar_type() == at::kInt),
              "block_tables and seq_lens must be contiguous and both int32 or both int64");
  TORCH_CHECK(block_tables.size(0) >= query.size(0) && seq_lens.size(0) >= query.size(0),
              "a block table row and a length per query");
  TORCH_CHECK(query.size(1) % kv_cache.size(3) == 0, "query heads must be a multiple of KV heads");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "decode_attention", [&] {
    if (seq_lens.scalar_type() == at::kLong)
      decode_attention_impl<scalar_t, int64_t>(query, kv_cache, block_tables, seq_lens, scale,
                                               sliding_window, out);
    else
      decode_attention_impl<scalar_t, int32_t>(query, kv_cache, block_tables, seq_lens, scale,
                                               sliding_window, out);
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// RMSNorm, optionally fused with the residual add.
template <typename T>
void rms_norm_impl(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                   const at::Tensor& weight, double eps, at::Tensor& out, T* res_out) {
  const int64_t N = x.size(-1);
  const int64_t rows = x.numel() / N;
  const T* xp = x.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  T* rp = residual.has_value() ? residual->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(N), tmp(N), w(N);
    load_f(wp, w.data(), N);
    for (int64_t r = begin; r < end; ++r) {
      load_f(xp + r * N, buf.data(), N);
      if (rp != nullptr) {
        load_f(rp + r * N, tmp.data(), N);
#pragma omp simd
        for (int64_t i = 0; i < N; ++i) buf[i] += tmp[i];
        round_to<T>(buf.data(), N);  // the add rounds in T
        store_f(buf.data(), res_out + r * N, N);
      }
      float lanes[16] = {0.f};
      int64_t i = 0;
      for (; i + 16 <= N; i += 16)
        for (int j = 0; j < 16; ++j) lanes[j] += buf[i + j] * buf[i + j];
      float ss = 0.f;
      for (; i < N; ++i) ss += buf[i] * buf[i];
      for (int j = 0; j < 16; ++j) ss += lanes[j];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(N) + feps);
#pragma omp simd
      for (int64_t k = 0; k < N; ++k) buf[k] *= inv;
      round_to<T>(buf.data(), N);  // normalised, rounded to T
#pragma omp simd
      for (int64_t k = 0; k < N; ++k) buf[k] *= w[k];
      store_f(buf.data(), op + r * N, N);
    }
  });
}

// With a residual: returns (rms_norm(x + residual), x + residual); else (rms_norm(x), None).
std::tuple<at::Tensor, c10::optional<at::Tensor>> rms_norm(
    const at::Tensor& x, const c10::optional<at::Tensor>& residual, const at::Tensor& weight,
    double eps) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "weight must be [hidden]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight and x must share a dtype");
  if (residual.has_value()) {
    TORCH_CHECK(residual->is_contiguous() && residual->sizes() == x.sizes() &&
                residual->scalar_type() == x.scalar_type(), "residual must match x");
  }
  at::Tensor out = at::empty_like(x);
  c10::optional<at::Tensor> res_out;
  if (residual.has_value()) res_out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_impl<scalar_t>(x, residual, weight, eps, out,
                            res_out.has_value() ? res_out->data_ptr<scalar_t>() : nullptr);
  });
  return {out, res_out};
}

// ---------------------------------------------------------------------------------------
// SiLU(gate) * up for x [..., 2d] holding gate then up -> [..., d]; products in T like torch.
template <typename T>
void silu_and_mul_impl(const at::Tensor& x, at::Tensor& out) {
  const int64_t d_ = out.size(-1);
  const int64_t rows = out.numel() / d_;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    const int64_t d = d_;  // a local: loops over a by-reference capture do not vectorise
    std::vector<float> gbuf(d), ubuf(d);
    float* __restrict g = gbuf.data();
    float* __restrict u = ubuf.data();
    for (int64_t r = begin; r < end; ++r) {
      load_f(xp + r * 2 * d, g, d);
      load_f(xp + r * 2 * d + d, u, d);
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) g[i] = g[i] / (1.f + exp_f(-g[i]));
      round_to<T>(g, d);  // silu's result in T
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) g[i] *= u[i];
      store_f(g, op + r * d, d);
    }
  });
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.is_contiguous() && x.size(-1) % 2 == 0, "x must be contiguous [..., 2d]");
  auto sizes = x.sizes().vec();
  sizes.back() /= 2;
  at::Tensor out = at::empty(sizes, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul", [&] {
    silu_and_mul_impl<scalar_t>(x, out);
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// Rotary embedding (rotate-half / NeoX layout), in place on q [T, Hq, D] and k [T, Hk, D]
// (rows may be strided views of one qkv tensor); cos/sin [T, D/2] float32. Products in T,
// like the reference: cos/sin are rounded to T first.
template <typename T>
void rotary_impl(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t T_ = q.size(0), Hq = q.size(1), Hk = k.size(1), D = q.size(2), half = D / 2;
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  T* qp = q.data_ptr<T>();
  T* kp = k.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ks0 = k.stride(0), ks1 = k.stride(1);
  at::parallel_for(0, T_, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> c(half), s(half), x1(half), x2(half), a(half), b(half);
    auto rotate = [&](T* row) {
      load_f(row, x1.data(), half);
      load_f(row + half, x2.data(), half);
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) { a[i] = x1[i] * c[i]; b[i] = x2[i] * s[i]; }
      round_to<T>(a.data(), half);
      round_to<T>(b.data(), half);
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) a[i] -= b[i];  // x1 c - x2 s
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) { b[i] = x2[i] * c[i]; x2[i] = x1[i] * s[i]; }
      round_to<T>(b.data(), half);
      round_to<T>(x2.data(), half);
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) b[i] += x2[i];  // x2 c + x1 s
      store_f(a.data(), row, half);
      store_f(b.data(), row + half, half);
    };
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < half; ++i) { c[i] = cp[t * half + i]; s[i] = sp[t * half + i]; }
      round_to<T>(c.data(), half);  // cos/sin in T, like the reference
      round_to<T>(s.data(), half);
      for (int64_t h = 0; h < Hq; ++h) rotate(qp + t * qs0 + h * qs1);
      for (int64_t h = 0; h < Hk; ++h) rotate(kp + t * ks0 + h * ks1);
    }
  });
}

void rotary_embedding(at::Tensor q, at::Tensor k, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == k.size(2),
              "q [T, Hq, D] and k [T, Hk, D]");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "the head dimension must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k must share a dtype");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
              cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == q.size(0) &&
              cos.size(1) * 2 == q.size(2), "cos/sin must be contiguous float32 [T, D/2]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rotary", [&] {
    rotary_impl<scalar_t>(q, k, cos, sin);
  });
}

// ---------------------------------------------------------------------------------------
// Store this step's K/V rows into the paged cache: token t goes to slot slot_mapping[t]
// (block = slot / block_size, row = slot % block_size); negative slots are skipped.
void store_kv(const at::Tensor& key, const at::Tensor& value, at::Tensor kv_cache,
              const at::Tensor& slot_mapping) {
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes() && kv_cache.dim() == 5 &&
              kv_cache.size(3) == key.size(1) && kv_cache.size(4) == key.size(2),
              "key/value [T, KVH, D] and kv_cache [2, N, B, KVH, D]");
  TORCH_CHECK(key.scalar_type() == kv_cache.scalar_type() && value.scalar_type() == key.scalar_type(),
              "key, value and kv_cache must share a dtype");
  TORCH_CHECK(kv_cache.is_contiguous(), "kv_cache must be contiguous");
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1 && key.stride(1) == key.size(2) &&
              value.stride(1) == value.size(2), "each token's K/V heads must be contiguous");
  TORCH_CHECK(slot_mapping.is_contiguous() && slot_mapping.scalar_type() == at::kLong,
              "slot_mapping must be contiguous int64");
  const int64_t T_ = key.size(0), row = key.size(1) * key.size(2);
  const int64_t num_slots = kv_cache.size(1) * kv_cache.size(2);
  const int64_t elem = kv_cache.element_size();
  const char* kp = static_cast<const char*>(key.data_ptr());
  const char* vp = static_cast<const char*>(value.data_ptr());
  char* ck = static_cast<char*>(kv_cache.data_ptr());
  char* cv = ck + kv_cache.stride(0) * elem;
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const int64_t ks = key.stride(0) * elem, vs = value.stride(0) * elem, bytes = row * elem;
  for (int64_t t = 0; t < T_; ++t)  // all checked before anything is written
    TORCH_CHECK(slots[t] < num_slots, "slot ", slots[t], " is past the cache's ", num_slots,
                " slots");
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    std::memcpy(ck + slot * bytes, kp + t * ks, bytes);
    std::memcpy(cv + slot * bytes, vp + t * vs, bytes);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention (in place reads)");
  m.def("rms_norm", &rms_norm, "RMSNorm, optionally fused with the residual add (returns out, x + residual)");
  m.def("silu_and_mul", &silu_and_mul, "SiLU(gate) * up");
  m.def("rotary_embedding", &rotary_embedding, "rotate-half rotary, in place on q and k");
  m.def("store_kv", &store_kv, "store K/V rows into the paged cache by slot");
}
