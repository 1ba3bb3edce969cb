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
#include <ATen/native/CPUBlas.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Half.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>
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
// exp_f on 16 lanes (the same reduction and polynomial; 2^n applied with scalef).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

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

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// block_scores_bf16's arithmetic over dc 32-dim slices, the first DC of a query held in
// registers (the rest read from memory). kExact: dc == DC, a constant, so the slices' loop
// unrolls (a run-time loop had spilled the 16 accumulators).
template <int DC, bool kExact>
inline void block_scores_bf16_dc(const c10::BFloat16* q, int64_t G, int64_t dc,
                                 const c10::BFloat16* kb, int64_t s_tok, int64_t nt, float scale,
                                 float* scores, int64_t ld) {
  const int64_t slices = kExact ? DC : dc, D = 32 * slices;
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t c0 = 0; c0 < nt; c0 += 16) {
    const int64_t n = std::min<int64_t>(16, nt - c0);
    const c10::BFloat16* k0 = kb + c0 * s_tok;
    for (int64_t g = 0; g < G; ++g) {
      __m512bh qv[DC];
      const c10::BFloat16* qg = q + g * D;
      for (int64_t c = 0; c < std::min<int64_t>(slices, DC); ++c)
        qv[c] = (__m512bh)_mm512_loadu_si512(qg + 32 * c);
      auto dot = [&](int64_t t) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t c = 0; c < slices; ++c) {
          const __m512bh qc = kExact || c < DC ? qv[c] : (__m512bh)_mm512_loadu_si512(qg + 32 * c);
          acc = _mm512_dpbf16_ps(acc, qc, (__m512bh)_mm512_loadu_si512(k0 + t * s_tok + 32 * c));
        }
        return acc;
      };
      __m512 v[16];
      if (n == 16) {  // a whole block: no bounds in the unrolled loop
#pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) v[t] = dot(t);
      } else {
        for (int t = 0; t < 16; ++t) v[t] = t < n ? dot(t) : _mm512_setzero_ps();
      }
      _mm512_mask_storeu_ps(scores + g * ld + c0, static_cast<__mmask16>((1u << n) - 1u),
                            _mm512_mul_ps(hsum16(v), vscale));
    }
  }
}
// block_scores for bf16 K rows against bf16 queries, with the CPU's bf16 dot-product
// instruction (pairs of bf16 products summed into float32 lanes): no conversion of K to
// float32 at all. q: G queries of D bf16 (D % 32 == 0), unscaled; scores come out times
// ``scale``.
inline void block_scores_bf16(const c10::BFloat16* q, int64_t G, int64_t D,
                              const c10::BFloat16* kb, int64_t s_tok, int64_t nt, float scale,
                              float* scores, int64_t ld) {
  if (D == 64) return block_scores_bf16_dc<2, true>(q, G, 2, kb, s_tok, nt, scale, scores, ld);
  if (D == 128)
    return block_scores_bf16_dc<4, true>(q, G, 4, kb, s_tok, nt, scale, scores, ld);
  block_scores_bf16_dc<8, false>(q, G, D / 32, kb, s_tok, nt, scale, scores, ld);
}
constexpr bool kBf16Dot = true;
#else
inline void block_scores_bf16(const c10::BFloat16*, int64_t, int64_t, const c10::BFloat16*,
                              int64_t, int64_t, float, float*, int64_t) {}
constexpr bool kBf16Dot = false;
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
// Decode scores on the matrix units: S^T [16 keys, G] = K [16 keys, D] @ Q^T [D, G], K rows
// loaded as tiles straight from the cache (row stride s_tok), Q^T packed once per task.
// Tiles: 0 = S^T (float32), 1 = 32 dims of 16 K rows, 2 = the same 32 dims of Q^T, as pairs.
constexpr bool kAmxScores = true;

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands the tile registers to a process only on request (once per process).
bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// This thread's tiles set for G query heads; torch's own GEMM ukernel is told to reload its
// configuration before its next call (amx_tiles_end).
inline void amx_scores_begin(int64_t G) {
  TileConfig cfg;
  cfg.rows[0] = 16; cfg.colsb[0] = static_cast<uint16_t>(4 * G);
  cfg.rows[1] = 16; cfg.colsb[1] = 64;
  cfg.rows[2] = 16; cfg.colsb[2] = static_cast<uint16_t>(4 * G);
  _tile_loadconfig(&cfg);
}

// qv [D / 32][16][G][2] from G query rows of D (row stride qs): the B operand of each 32 dims.
inline void amx_pack_queries(const c10::BFloat16* q, int64_t qs, int64_t G, int64_t D,
                             c10::BFloat16* qv) {
  for (int64_t k = 0; k < D / 32; ++k)
    for (int64_t r = 0; r < 16; ++r)
      for (int64_t n = 0; n < G; ++n)
        for (int64_t j = 0; j < 2; ++j)
          qv[((k * 16 + r) * G + n) * 2 + j] = q[n * qs + k * 32 + 2 * r + j];
}

// c [16, G] = the 16 K rows at kb (row stride s_tok) times the packed queries qv.
inline void amx_scores16(const c10::BFloat16* kb, int64_t s_tok, const c10::BFloat16* qv,
                         int64_t G, int64_t D, float* c) {
  _tile_zero(0);
  for (int64_t k = 0; k < D / 32; ++k) {
    _tile_loadd(1, kb + k * 32, s_tok * static_cast<int64_t>(sizeof(c10::BFloat16)));
    _tile_loadd(2, qv + k * 16 * G * 2, 4 * G);
    _tile_dpbf16ps(0, 1, 2);
  }
  _tile_stored(0, c, 4 * G);
}
// sc[g * ld + t] = c[t * G + g] * scale for 16 keys t: the tile's [keys, heads] as rows per
// head, by permutes across the G vectors c spans (two per instruction).
inline void transpose_scores16(const float* c, int64_t G, float scale, float* sc, int64_t ld) {
  __m512 v[16];
  for (int64_t i = 0; i < G; ++i) v[i] = _mm512_loadu_ps(c + 16 * i);
  const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    // lane t reads element t * G + g: vector (t * G + g) / 16
    const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int>(G))),
                                         _mm512_set1_epi32(static_cast<int>(g)));
    __m512 out = _mm512_setzero_ps();
    for (int64_t k = 0; 2 * k < G; ++k) {  // elements [32k, 32k + 32): vectors 2k, 2k + 1
      const __m512i rel = _mm512_sub_epi32(idx, _mm512_set1_epi32(static_cast<int>(32 * k)));
      const __mmask16 in = _mm512_cmp_epu32_mask(rel, _mm512_set1_epi32(32), _MM_CMPINT_LT);
      const __m512 hi = v[2 * k + 1 < G ? 2 * k + 1 : 2 * k];
      out = _mm512_mask_mov_ps(out, in, _mm512_permutex2var_ps(v[2 * k], rel, hi));
    }
    _mm512_storeu_ps(sc + g * ld, _mm512_mul_ps(out, _mm512_set1_ps(scale)));
  }
}
#else
constexpr bool kAmxScores = false;
inline bool amx_permitted() { return false; }
inline void amx_scores_begin(int64_t) {}
inline void amx_pack_queries(const c10::BFloat16*, int64_t, int64_t, int64_t, c10::BFloat16*) {}
inline void amx_scores16(const c10::BFloat16*, int64_t, const c10::BFloat16*, int64_t, int64_t,
                         float*) {}
inline void transpose_scores16(const float*, int64_t, float, float*, int64_t) {}
#endif

// The end of a parallel task's tile work: this thread's own tiles released where it set them
// (`ours`: the decode scores, the direct GEMM) and torch's GEMM ukernel told to reload its
// configuration before its next call.
inline void amx_tiles_end(bool ours) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
  if (ours) _tile_release();
#endif
  at::native::cpublas::brgemm_release(true);
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
// FP8 (E4M3) KV cache: stored = saturate(x / scale), read = stored * scale (kv_quant.py).
// Every E4M3 value is exactly a bf16 value, so reading converts without rounding and the
// scales fold into arithmetic the kernels do anyway (K's into the softmax scale, V's into
// the output); writing rounds to nearest even, as torch's cast does.
using fp8 = c10::Float8_e4m3fn;
constexpr float kFp8Max = 448.f;

#if defined(__AVX512BW__)
// bf16 bits of the E4M3 subnormals m * 2^-9, m = 0..7: 0, 2^-9, 2^-8, 1.5 * 2^-8, 2^-7,
// 1.25, 1.5, 1.75 * 2^-7
constexpr uint16_t kE4m3SubnormalBf16[8] = {0x0000, 0x3B00, 0x3B80, 0x3BC0,
                                            0x3C00, 0x3C20, 0x3C40, 0x3C60};

// 32 E4M3 values as 32 bf16 (exact). Normals: exponent rebased (bias 7 -> 127), mantissa
// 3 -> 7 bits; subnormals (exponent field 0: m * 2^-9) from a table of the 8 of them.
inline __m512i e4m3_to_bf16_x32(const fp8* p) {
  const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i mag = _mm512_and_si512(w, _mm512_set1_epi16(0x7F));
  __m512i r = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(120 << 7));
  const __m512i sub_table =
      _mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kE4m3SubnormalBf16)));
  r = _mm512_mask_permutexvar_epi16(r, _mm512_testn_epi16_mask(w, _mm512_set1_epi16(0x78)), mag,
                                    sub_table);
  return _mm512_or_si512(r, _mm512_and_si512(_mm512_slli_epi16(w, 8), _mm512_set1_epi16(-32768)));
}

#if defined(__AVX512VBMI__)
// bf16 bits of the E4M3 magnitude m (0..127), e4m3_to_bf16_x32's arithmetic: the byte tables
// of e4m3_to_bf16_x64
constexpr uint16_t e4m3_mag_bf16(int m) {
  return (m & 0x78) == 0 ? kE4m3SubnormalBf16[m] : static_cast<uint16_t>((m << 4) + (120 << 7));
}
// the byte tables and the input order of e4m3_to_bf16_x64, built at compile time
struct E4m3ByteTables {
  alignas(64) uint8_t hi[128];
  alignas(64) uint8_t lo[128];
  alignas(64) uint8_t order[64];
};
constexpr E4m3ByteTables make_e4m3_tables() {
  E4m3ByteTables t{};
  for (int m = 0; m < 128; ++m) {
    t.hi[m] = static_cast<uint8_t>(e4m3_mag_bf16(m) >> 8);
    t.lo[m] = static_cast<uint8_t>(e4m3_mag_bf16(m) & 0xFF);
  }
  // 128-bit lane k of the permuted input: values 8k .. 8k+7, then 32+8k .. 32+8k+7
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 8; ++j) {
      t.order[16 * k + j] = static_cast<uint8_t>(8 * k + j);
      t.order[16 * k + 8 + j] = static_cast<uint8_t>(32 + 8 * k + j);
    }
  return t;
}
inline constexpr E4m3ByteTables kE4m3Tables = make_e4m3_tables();

// 64 E4M3 values as 64 bf16 (out[0]: values 0-31, out[1]: 32-63), the same bits as two
// e4m3_to_bf16_x32 calls: each bf16's high and low byte looked up from 128-entry byte tables
// by the magnitude (two-source byte permutes), the sign or-ed in, the bytes interleaved. The
// input is first permuted so the in-lane interleave leaves the values in order: 6 vector
// operations for 64 values where e4m3_to_bf16_x32 takes 9 for 32.
struct E4m3Tables {  // kE4m3Tables in registers, loaded once per loop
  __m512i hi0 = _mm512_load_si512(kE4m3Tables.hi), hi1 = _mm512_load_si512(kE4m3Tables.hi + 64);
  __m512i lo0 = _mm512_load_si512(kE4m3Tables.lo), lo1 = _mm512_load_si512(kE4m3Tables.lo + 64);
  __m512i order = _mm512_load_si512(kE4m3Tables.order);
};
inline void e4m3_to_bf16_x64(const E4m3Tables& t, const fp8* p, __m512i out[2]) {
  const __m512i w = _mm512_permutexvar_epi8(t.order, _mm512_loadu_si512(p));
  const __m512i hi = _mm512_ternarylogic_epi32(  // table byte | (w & 0x80): the sign
      _mm512_permutex2var_epi8(t.hi0, w, t.hi1), w, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, w, t.lo1);
  out[0] = _mm512_unpacklo_epi8(lo, hi);
  out[1] = _mm512_unpackhi_epi8(lo, hi);
}
constexpr bool kE4m3x64 = true;
#else
constexpr bool kE4m3x64 = false;
#endif

// 16 floats to E4M3 bytes: saturated to +-448, rounded to nearest even (NaN stays NaN).
inline __m128i f32_to_e4m3_x16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512 a = _mm512_min_ps(_mm512_abs_ps(x), _mm512_set1_ps(kFp8Max));
  const __m512i ab = _mm512_castps_si512(a);
  // normals (a >= 2^-6): round the float's mantissa to 3 bits, rebase the exponent
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(ab, 20), _mm512_set1_epi32(1));
  const __m512i rn = _mm512_srli_epi32(
      _mm512_add_epi32(ab, _mm512_add_epi32(_mm512_set1_epi32(0x7FFFF), lsb)), 20);
  __m512i code = _mm512_sub_epi32(rn, _mm512_set1_epi32(120 << 3));
  // subnormals: a / 2^-9 rounded to an integer (8 is the smallest normal, 0x08)
  const __mmask16 sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
  code = _mm512_mask_mov_epi32(code, sub, _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(512.f))));
  code = _mm512_mask_mov_epi32(code, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7F));
  code = _mm512_or_si512(code, _mm512_and_si512(_mm512_srli_epi32(bits, 24), _mm512_set1_epi32(0x80)));
  return _mm512_cvtepi32_epi8(code);
}
#endif

// rows [0, n) of D E4M3 values at src (row stride s) to bf16 rows of D at dst, times scale
// (1.0: exact)
inline void fp8_rows_to_bf16(const fp8* src, int64_t s, int64_t n, int64_t D, float scale,
                             c10::BFloat16* dst) {
#if defined(__AVX512VBMI__)
  const E4m3Tables tables;
#endif
  for (int64_t r = 0; r < n; ++r) {
    const fp8* in = src + r * s;
    c10::BFloat16* out = dst + r * D;
    int64_t i = 0;
#if defined(__AVX512BW__) && defined(__AVX512BF16__)
#if defined(__AVX512VBMI__)
    if (scale == 1.f) {  // exact: 64 at a time
      for (; i + 64 <= D; i += 64) {
        __m512i v[2];
        e4m3_to_bf16_x64(tables, in + i, v);
        _mm512_storeu_si512(out + i, v[0]);
        _mm512_storeu_si512(out + i + 32, v[1]);
      }
    }
#endif
    for (; i + 32 <= D; i += 32) {
      __m512i v = e4m3_to_bf16_x32(in + i);
      if (scale != 1.f) {
        const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
        const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
        v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, _mm512_set1_ps(scale)),
                                         _mm512_mul_ps(lo, _mm512_set1_ps(scale)));
      }
      _mm512_storeu_si512(out + i, v);
    }
#endif
    for (; i < D; ++i) out[i] = c10::BFloat16(static_cast<float>(in[i]) * scale);
  }
}

#if defined(__AVX512BW__)
// E4M3 V rows accumulated in float32 straight from registers: each 32 values convert to 32
// bf16, read as 16 pairs they give the even dims (shifted up) and the odd dims (masked) as
// two float32 vectors, so the accumulators hold each 32 dims as [even, odd] (eo_dim) until
// the task's end.
constexpr bool kEvenOddV = true;

// the dim that accumulator lane i of 32-dim slice c, half (0: even, 1: odd) holds
inline int64_t eo_dim(int64_t c, int64_t half, int64_t i) { return 32 * c + 2 * i + half; }

// acc [G][NC][2][16] (even/odd order) += scores [G, ld] (first nt columns) @ the nt E4M3 V
// rows at vb (row stride s_tok), D = 32 * NC.
template <int G, int NC>
void accumulate_v_eo(float* acc, const float* scores, int64_t ld, const fp8* vb, int64_t s_tok,
                     int64_t nt) {
  __m512 a[G][NC][2];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c)
      for (int h = 0; h < 2; ++h) a[g][c][h] = _mm512_loadu_ps(acc + ((g * NC + c) * 2 + h) * 16);
  const __m512i odd_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
#if defined(__AVX512VBMI__)
  const E4m3Tables tables;
#endif
  for (int64_t t = 0; t < nt; ++t) {
    const fp8* row = vb + t * s_tok;
    __m512 even[NC], odd[NC];
    __m512i x[NC];
    if constexpr (kE4m3x64 && NC % 2 == 0) {
#if defined(__AVX512VBMI__)
      for (int c = 0; c < NC; c += 2) e4m3_to_bf16_x64(tables, row + 32 * c, x + c);
#endif
    } else {
      for (int c = 0; c < NC; ++c) x[c] = e4m3_to_bf16_x32(row + 32 * c);
    }
    for (int c = 0; c < NC; ++c) {
      even[c] = _mm512_castsi512_ps(_mm512_slli_epi32(x[c], 16));
      odd[c] = _mm512_castsi512_ps(_mm512_and_si512(x[c], odd_mask));
    }
    for (int g = 0; g < G; ++g) {
      const __m512 pv = _mm512_set1_ps(scores[g * ld + t]);
      for (int c = 0; c < NC; ++c) {
        a[g][c][0] = _mm512_fmadd_ps(pv, even[c], a[g][c][0]);
        a[g][c][1] = _mm512_fmadd_ps(pv, odd[c], a[g][c][1]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c)
      for (int h = 0; h < 2; ++h) _mm512_storeu_ps(acc + ((g * NC + c) * 2 + h) * 16, a[g][c][h]);
}

using EoFn = void (*)(float*, const float*, int64_t, const fp8*, int64_t, int64_t);

// query heads per call for D = 32 * nc (the accumulators fit the 32 vector registers)
inline int64_t eo_group(int64_t nc) { return nc == 1 ? 12 : nc == 2 ? 6 : 3; }

template <int NC, int... Gs>
EoFn eo_fn_of(int64_t g, std::integer_sequence<int, Gs...>) {
  EoFn fn = nullptr;
  ((g == Gs + 1 ? (fn = &accumulate_v_eo<Gs + 1, NC>, 0) : 0), ...);
  return fn;
}

// the kernel for g (1 .. eo_group) query heads of D dims; nullptr where none is built
inline EoFn eo_fn(int64_t g, int64_t D) {
  if (D == 32) return eo_fn_of<1>(g, std::make_integer_sequence<int, 12>{});
  if (D == 64) return eo_fn_of<2>(g, std::make_integer_sequence<int, 6>{});
  if (D == 128) return eo_fn_of<4>(g, std::make_integer_sequence<int, 3>{});
  return nullptr;
}
#else
constexpr bool kEvenOddV = false;
using EoFn = void (*)(float*, const float*, int64_t, const fp8*, int64_t, int64_t);
inline int64_t eo_group(int64_t) { return 1; }
inline int64_t eo_dim(int64_t, int64_t, int64_t) { return 0; }
inline EoFn eo_fn(int64_t, int64_t) { return nullptr; }
#endif

// kv_quant.check_kv_scales: positive, and 1.0 unless the cache is FP8
inline void check_kv_scales(bool fp8_cache, double k_scale, double v_scale) {
  TORCH_CHECK(k_scale > 0 && v_scale > 0 && (fp8_cache || (k_scale == 1.0 && v_scale == 1.0)),
              "k_scale/v_scale: positive, and 1.0 unless the cache is FP8");
}

// n values of x / scale into E4M3 (kv_quant.quantize_kv_ref: saturate, then round)
template <typename T>
inline void quantize_fp8(const T* x, float scale, int64_t n, fp8* out) {
  int64_t i = 0;
#if defined(__AVX512BW__)
  const __m512 vs = _mm512_set1_ps(scale);
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     f32_to_e4m3_x16(_mm512_div_ps(load16<T>(x + i), vs)));
#endif
  for (; i < n; ++i)
    out[i] = fp8(std::clamp(static_cast<float>(x[i]) / scale, -kFp8Max, kFp8Max));
}

// The online softmax's correction exp(m_old - m_new) of the running sums: 0 for a query's
// first scores (m_old = -inf), 1 where the max did not move, exp_f otherwise (no libm call).
inline float corr_exp(float m_old, float m_new) {
  if (m_old == m_new) return 1.f;
  return m_old == -std::numeric_limits<float>::infinity() ? 0.f : exp_f(m_old - m_new);
}

// Tasks shared out one at a time from a counter: a thread that finishes early (or was held up
// by the machine's other work) takes the next instead of waiting at the end, as a fixed
// split leaves it. heaviest_first: sizes differ (sequences' lengths), so the longest go
// first; in_order: neighbouring tasks share data (a prompt's query tiles read the same
// packed keys), so they run about together.
class SharedTasks {
 public:
  static SharedTasks heaviest_first(const std::vector<int64_t>& work) {
    std::vector<int64_t> order(work.size());
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return work[a] > work[b]; });
    return SharedTasks(std::move(order));
  }
  static SharedTasks in_order(int64_t n) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), int64_t{0});
    return SharedTasks(std::move(order));
  }
  int64_t size() const { return static_cast<int64_t>(order_.size()); }
  // the threads to run (no more than the tasks)
  int64_t threads() const {
    return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), size()));
  }
  // the next task to run, or -1 when none is left
  int64_t next() {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    return i < size() ? order_[i] : -1;
  }

 private:
  explicit SharedTasks(std::vector<int64_t> order) : order_(std::move(order)) {}
  std::vector<int64_t> order_;
  std::atomic<int64_t> next_{0};
};


// ---------------------------------------------------------------------------------------
// The online-softmax update of one query over n new scores: the running max m moves to
// cover them, s[t] = exp(s[t] - max) in place; returns (correction of the old sums, sum).
inline std::pair<float, float> softmax_update(float* __restrict s, int64_t n, float& m) {
#if defined(__AVX512F__)
  __m512 vmax = _mm512_set1_ps(m);
  for (int64_t t = 0; t < n; t += 16) {
    const __mmask16 k = static_cast<__mmask16>(n - t >= 16 ? 0xFFFFu : (1u << (n - t)) - 1u);
    vmax = _mm512_mask_max_ps(vmax, k, vmax, _mm512_maskz_loadu_ps(k, s + t));
  }
  const float bmax = _mm512_reduce_max_ps(vmax);
  const __m512 vb = _mm512_set1_ps(bmax);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; t += 16) {
    const __mmask16 k = static_cast<__mmask16>(n - t >= 16 ? 0xFFFFu : (1u << (n - t)) - 1u);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), vb)));
    _mm512_mask_storeu_ps(s + t, k, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
#else
  float bmax = m;
  for (int64_t t = 0; t < n; ++t) bmax = std::max(bmax, s[t]);
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) s[t] = exp_f(s[t] - bmax);
  float sum = 0.f;
  for (int64_t t = 0; t < n; ++t) sum += s[t];
#endif
  const float corr = corr_exp(m, bmax);
  m = bmax;
  return {corr, sum};
}

// Decode attention over the paged cache, read in place.
//
// query [S, H, D]; kv_cache [2, num_blocks, block_size, KVH, D]; block_tables [S, max_blocks]
// int32; seq_lens [S] (int32/int64): query s attends keys [max(0, len - window), len).
// One task per sequence when there are enough sequences to share out (a block's rows for all
// its KV heads are then read in one sweep, in address order), else per (sequence, KV head).
// The G = H / KVH query heads of a KV head share each K/V row read. Keys go in chunks of
// whole blocks (about DA_CHUNK keys): the chunk's scores for every head, one online-softmax
// update per head (its reductions amortised over the chunk), then V.
constexpr int64_t DA_CHUNK = 64;

// The cache lines a decode task reads, in the order it reads them (per chunk of blocks: the
// blocks' K rows, then their V rows; per row the span of the task's KV heads), prefetched
// kv_prefetch_policy().lines ahead of the arithmetic, a block's share per (block, head) step of it.
// A steady stream keeps requests in flight while the arithmetic runs, where a burst per
// block (the next block's K, this block's V) left the memory idle during the arithmetic:
// 1.19x (FP8 cache) and 1.03x (bf16) over 30 layers of 64 sequences
// (benchmarks/results/cpu_decode_attention_ab_run12.json). Distances of 16 to 512 lines,
// every other line only, and prefetches spread over V's rows were slower (docs/benchmarks.md
// run 12). That was on Intel (Sapphire Rapids); on AMD Zen 4 the stream runs further ahead
// into L2 instead: 1.46x (bf16) and 1.26x (FP8) over 48 lines into L1, level from 128 to 256
// lines (benchmarks/results/cpu_decode_attention_ab_run15.json, docs/benchmarks.md run 15).
struct KvPrefetchPolicy {
  bool l2;        // the L2 hint (prefetcht1) rather than L1 (prefetcht0)
  int64_t lines;  // how far ahead of the arithmetic
};
inline KvPrefetchPolicy kv_prefetch_policy() {
  static const KvPrefetchPolicy p = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") ? KvPrefetchPolicy{true, 192} : KvPrefetchPolicy{false, 48};
  }();
  return p;
}
template <typename C, typename IdxT>
class KvPrefetchStream {
 public:
  KvPrefetchStream(const C* k_base, const C* v_base, int64_t s_blk, int64_t s_tok, int64_t BS,
                   int64_t CB, int64_t span_bytes, bool l2)
      : l2_(l2), k_(reinterpret_cast<const char*>(k_base)), v_(reinterpret_cast<const char*>(v_base)),
        s_blk_(s_blk * static_cast<int64_t>(sizeof(C))), s_tok_(s_tok * static_cast<int64_t>(sizeof(C))),
        BS_(BS), CB_(CB), span_(span_bytes), whole_rows_(span_bytes == s_tok_) {}
  // the lines of one block's K (or V) rows for the task's heads
  int64_t block_lines() const { return BS_ * ((span_ + 63) / 64); }
  // A new task: its table, its heads' offset in a row, blocks [b0, b_end), keys < len; the
  // first `ahead` lines at once.
  void start(const IdxT* table, int64_t head_off, int64_t b0, int64_t b_end, int64_t len,
             int64_t ahead) {
    table_ = table, head_off_ = head_off * static_cast<int64_t>(sizeof(C));
    b_end_ = b_end, len_ = len, c0_ = b0, b_ = b0, t_ = 0, o_ = 0, v_part_ = false;
    step(ahead);
  }
  void step(int64_t n) {
    while (n > 0 && c0_ < b_end_) {
      if (o_ == 0) {  // a new unit: this block's K or V rows
        unit_ = (v_part_ ? v_ : k_) + static_cast<int64_t>(table_[b_]) * s_blk_ + head_off_;
        rows_ = std::min(BS_, len_ - b_ * BS_);
        end_ = whole_rows_ ? rows_ * s_tok_ : span_;
      }
      // the lines left in this row's span (all the unit's rows when they are contiguous)
      const int64_t k = std::min(n, (end_ - o_ + 63) / 64);
      const char* p = unit_ + t_ * s_tok_ + o_;
      if (l2_)
        for (int64_t i = 0; i < k; ++i) __builtin_prefetch(p + 64 * i, 0, 2);
      else
        for (int64_t i = 0; i < k; ++i) __builtin_prefetch(p + 64 * i);
      n -= k;
      if ((o_ += 64 * k) < end_) continue;
      o_ = 0;
      if (!whole_rows_ && ++t_ < rows_) continue;  // rows apart: the next row's span
      t_ = 0;
      if (++b_ < std::min(c0_ + CB_, b_end_)) continue;
      if (!v_part_) {
        v_part_ = true, b_ = c0_;
      } else {
        v_part_ = false, c0_ += CB_, b_ = c0_;
      }
    }
  }

 private:
  bool l2_;
  const char* k_;
  const char* v_;
  int64_t s_blk_, s_tok_, BS_, CB_, span_;
  bool whole_rows_;  // the span is the whole row: a block's rows are one contiguous range
  const IdxT* table_ = nullptr;
  int64_t head_off_ = 0, b_end_ = 0, len_ = 0, c0_ = 0, b_ = 0, t_ = 0, o_ = 0;
  bool v_part_ = false;
  const char* unit_ = nullptr;  // the current unit's first row
  int64_t rows_ = 0, end_ = 0;  // its rows; the bytes of a row's span, or of all its rows
};

// C: the cache's element type, T's or FP8 (with bf16 T): a block's K rows for a KV head are
// converted to bf16 (exactly) in a scratch buffer for the same score arithmetic, its V rows in
// registers (accumulate_v_eo); k_scale joins the softmax scale and v_scale the output's
// normalisation.
template <typename T, typename C, typename IdxT>
void decode_attention_impl(const at::Tensor& query, const at::Tensor& kv_cache,
                           const at::Tensor& block_tables, const at::Tensor& seq_lens,
                           double scale, int64_t sliding_window, at::Tensor& out,
                           double k_scale = 1.0, double v_scale = 1.0) {
  constexpr bool kFp8 = std::is_same_v<C, fp8>;
  static_assert(!kFp8 || std::is_same_v<T, c10::BFloat16>, "an FP8 cache is read with bf16 queries");
  const int64_t S = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t BS = kv_cache.size(2), KVH = kv_cache.size(3);
  const int64_t G = H / KVH;
  const int64_t max_blocks = block_tables.size(1);
  const T* q_ptr = query.data_ptr<T>();
  const C* k_base = kv_cache.data_ptr<C>();
  const int64_t cache_half = kv_cache.stride(0);
  const C* v_base = k_base + cache_half;
  const int64_t s_blk = kv_cache.stride(1), s_tok = kv_cache.stride(2), s_head = kv_cache.stride(3);
  const IdxT* bt = block_tables.data_ptr<IdxT>();
  const IdxT* lens = seq_lens.data_ptr<IdxT>();
  T* o_ptr = out.data_ptr<T>();
  const int64_t qs0 = query.stride(0), qs1 = query.stride(1);
  const int64_t os0 = out.stride(0), os1 = out.stride(1);
  const float fscale = static_cast<float>(scale * k_scale);  // stored K times k_scale
  const float out_scale = static_cast<float>(v_scale);
  // bf16 scores through the bf16 dot-product instruction where the CPU has it
  const bool bf16_dot = kBf16Dot && std::is_same_v<T, c10::BFloat16> && D % 32 == 0;
  const int64_t HT = S >= 4 * at::get_num_threads() ? KVH : 1;  // KV heads per task
  const int64_t CB = std::max<int64_t>(1, DA_CHUNK / BS);        // blocks per chunk
  const int64_t CT = CB * BS;                                    // keys per chunk
  // scores on the matrix units: bf16, whole 32-dim tiles, at most 16 heads per KV head
  const bool amx = bf16_dot && kAmxScores && G <= 16 && amx_permitted();
  // E4M3 V converted to bf16 in registers and accumulated as even/odd dims, in groups of
  // query heads (for a bf16 cache the plain widening measured faster: 25.4 against 27.4 ms
  // for 30 layers of 64 cache-resident sequences)
  std::vector<EoFn> eo_fns;
  const int64_t egroup = eo_group(D / 32);
  if constexpr (kFp8)
    if (kEvenOddV && D % 32 == 0)
      for (int64_t g0 = 0; g0 < G; g0 += egroup) eo_fns.push_back(eo_fn(std::min(egroup, G - g0), D));
  const bool even_odd = !eo_fns.empty() && eo_fns.front() != nullptr && eo_fns.back() != nullptr;

  // tasks (a sequence, or a sequence's KV head) by their keys, the longest first
  const int64_t ntasks = S * (KVH / HT);
  std::vector<int64_t> work(ntasks);
  for (int64_t t = 0; t < ntasks; ++t) {
    const int64_t len = static_cast<int64_t>(lens[t / (KVH / HT)]);
    work[t] = sliding_window > 0 ? std::min(len, sliding_window) : len;
  }
  SharedTasks tasks = SharedTasks::heaviest_first(work);
  at::parallel_for(0, tasks.threads(), 1, [&](int64_t, int64_t) {
    const int64_t HG = HT * G;  // the query heads of a task
    std::vector<float> q(HG * D), acc(HG * D), krow(D), kbuf(16 * D), scores(HG * CT), m(HG), l(HG);
    std::vector<T> qb(HG * D);
    std::vector<c10::BFloat16> qv(amx ? HG * D : 0);
    std::vector<float> c16(amx ? 16 * G : 0);
    std::vector<T> kconv(kFp8 ? BS * D : 0), vconv(kFp8 && !even_odd ? BS * D : 0);  // as bf16
    std::vector<float> nat(even_odd ? D : 0);
    // the stream over the span of the task's KV heads in each row, and how many lines it
    // issues per (block, head) step of the arithmetic: one block's share, so it keeps its distance
    const KvPrefetchPolicy policy = kv_prefetch_policy();
    KvPrefetchStream<C, IdxT> pf(k_base, v_base, s_blk, s_tok, BS, CB,
                                 ((HT - 1) * s_head + D) * static_cast<int64_t>(sizeof(C)), policy.l2);
    const int64_t per_step = (pf.block_lines() + HT - 1) / HT;
    if (amx) amx_scores_begin(G);
    for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
      const int64_t s = task / (KVH / HT), h0 = (task % (KVH / HT)) * HT, h1 = h0 + HT;
      const int64_t len = static_cast<int64_t>(lens[s]);
      T* o_rows = o_ptr + s * os0 + h0 * G * os1;
      if (len <= 0) {  // a padding row: zeros
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t g = 0; g < HG; ++g) store_f(acc.data(), o_rows + g * os1, D);
        continue;
      }
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, len - sliding_window) : 0;
      const T* q_rows = q_ptr + s * qs0 + h0 * G * qs1;
      if (amx) {
        for (int64_t h = 0; h < HT; ++h)
          amx_pack_queries(reinterpret_cast<const c10::BFloat16*>(q_rows + h * G * qs1), qs1, G, D,
                           qv.data() + h * G * D);
      }
      if (bf16_dot) {  // the queries as they are (the scale applies to the scores)
        for (int64_t g = 0; g < HG; ++g)
          std::memcpy(qb.data() + g * D, q_rows + g * qs1, D * sizeof(T));
      } else {
        for (int64_t g = 0; g < HG; ++g) {
          load_f(q_rows + g * qs1, q.data() + g * D, D);
          for (int64_t d = 0; d < D; ++d) q[g * D + d] *= fscale;
        }
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      const IdxT* table = bt + s * max_blocks;
      const int64_t b_end = (len + BS - 1) / BS;
      pf.start(table, h0 * s_head, first / BS, b_end, len, policy.lines);
      for (int64_t c0 = first / BS; c0 < b_end; c0 += CB) {
        const int64_t c1 = std::min(c0 + CB, b_end);
        const int64_t k0 = std::max(c0 * BS, first);  // the chunk's first key
        const int64_t nk = std::min(c1 * BS, len) - k0;
        // scores: block by block, every head of the task per block
        for (int64_t b = c0; b < c1; ++b) {
          const int64_t blk = static_cast<int64_t>(table[b]);
          const int64_t t0 = std::max(b * BS, first), t1 = std::min((b + 1) * BS, len);
          const C* kb = k_base + blk * s_blk + (t0 - b * BS) * s_tok;
          for (int64_t h = h0; h < h1; ++h) {
            pf.step(per_step);
            const T* kr;  // the block's K rows for head h, in T
            int64_t ks;
            if constexpr (kFp8) {
              fp8_rows_to_bf16(kb + h * s_head, s_tok, t1 - t0, D, 1.f, kconv.data());
              kr = kconv.data(), ks = D;
            } else {
              kr = kb + h * s_head, ks = s_tok;
            }
            float* sc = scores.data() + (h - h0) * G * CT + (t0 - k0);
            int64_t done = 0;
            if (amx)  // whole tiles of 16 keys; the rest below
              for (; done + 16 <= t1 - t0; done += 16) {
                amx_scores16(reinterpret_cast<const c10::BFloat16*>(kr + done * ks), ks,
                             qv.data() + (h - h0) * G * D, G, D, c16.data());
                transpose_scores16(c16.data(), G, fscale, sc + done, CT);
              }
            if (done == t1 - t0) continue;
            sc += done;
            if (bf16_dot)
              block_scores_bf16(reinterpret_cast<const c10::BFloat16*>(qb.data()) + (h - h0) * G * D, G, D,
                                reinterpret_cast<const c10::BFloat16*>(kr + done * ks), ks,
                                t1 - t0 - done, fscale, sc, CT);
            else
              block_scores(q.data() + (h - h0) * G * D, G, D, kr + done * ks, ks, t1 - t0 - done,
                           kbuf.data(), sc, CT);
          }
        }
        for (int64_t g = 0; g < HG; ++g) {
          const auto [corr, sum] = softmax_update(scores.data() + g * CT, nk, m[g]);
          l[g] = l[g] * corr + sum;
          if (corr == 1.f) continue;  // the max did not move
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] *= corr;
        }
        for (int64_t b = c0; b < c1; ++b) {
          const int64_t blk = static_cast<int64_t>(table[b]);
          const int64_t t0 = std::max(b * BS, first), t1 = std::min((b + 1) * BS, len);
          const C* vb = v_base + blk * s_blk + (t0 - b * BS) * s_tok;
          for (int64_t h = h0; h < h1; ++h) {
            pf.step(per_step);
            float* a = acc.data() + (h - h0) * G * D;
            const float* sc = scores.data() + (h - h0) * G * CT + (t0 - k0);
            if (even_odd) {
              if constexpr (kFp8)
                for (int64_t g0 = 0, i = 0; g0 < G; g0 += egroup, ++i)
                  eo_fns[i](a + g0 * D, sc + g0 * CT, CT, vb + h * s_head, s_tok, t1 - t0);
              continue;
            }
            if constexpr (kFp8) {
              fp8_rows_to_bf16(vb + h * s_head, s_tok, t1 - t0, D, 1.f, vconv.data());
              accumulate_v(a, sc, CT, vconv.data(), D, t1 - t0, G, D, krow.data());
            } else {
              accumulate_v(a, sc, CT, vb + h * s_head, s_tok, t1 - t0, G, D, krow.data());
            }
          }
        }
      }
      for (int64_t g = 0; g < HG; ++g) {
        const float inv = out_scale / l[g];
        float* a = acc.data() + g * D;
        if (even_odd) {  // back to the natural order of the dims
          for (int64_t c = 0; c < D / 32; ++c)
            for (int64_t half = 0; half < 2; ++half)
              for (int64_t i = 0; i < 16; ++i) nat[eo_dim(c, half, i)] = a[(c * 2 + half) * 16 + i];
          std::copy(nat.begin(), nat.end(), a);
        }
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] *= inv;
        store_f(a, o_rows + g * os1, D);
      }
    }
    if (amx) amx_tiles_end(true);
  });
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& seq_lens,
                            double scale, int64_t sliding_window, at::Tensor out, double k_scale,
                            double v_scale) {
  TORCH_CHECK(query.dim() == 3 && kv_cache.dim() == 5, "query [S, H, D], kv_cache [2, N, B, KVH, D]");
  TORCH_CHECK(query.stride(2) == 1 && kv_cache.stride(4) == 1 && out.stride(2) == 1,
              "the head dimension must be contiguous");
  const bool fp8_cache = kv_cache.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK((query.scalar_type() == kv_cache.scalar_type() ||
               (fp8_cache && query.scalar_type() == at::kBFloat16)) &&
              out.scalar_type() == query.scalar_type(),
              "query, kv_cache and out must share a dtype (an FP8 cache takes bf16 queries)");
  check_kv_scales(fp8_cache, k_scale, v_scale);
  TORCH_CHECK(block_tables.is_contiguous() && seq_lens.is_contiguous() &&
              block_tables.scalar_type() == seq_lens.scalar_type() &&
              (seq_lens.scalar_type() == at::kLong || seq_lens.scalar_type() == at::kInt),
              "block_tables and seq_lens must be contiguous and both int32 or both int64");
  TORCH_CHECK(block_tables.size(0) >= query.size(0) && seq_lens.size(0) >= query.size(0),
              "a block table row and a length per query");
  TORCH_CHECK(query.size(1) % kv_cache.size(3) == 0, "query heads must be a multiple of KV heads");
  if (fp8_cache) {
    using bf16 = c10::BFloat16;
    if (seq_lens.scalar_type() == at::kLong)
      decode_attention_impl<bf16, fp8, int64_t>(query, kv_cache, block_tables, seq_lens, scale,
                                                sliding_window, out, k_scale, v_scale);
    else
      decode_attention_impl<bf16, fp8, int32_t>(query, kv_cache, block_tables, seq_lens, scale,
                                                sliding_window, out, k_scale, v_scale);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "decode_attention", [&] {
    if (seq_lens.scalar_type() == at::kLong)
      decode_attention_impl<scalar_t, scalar_t, int64_t>(query, kv_cache, block_tables, seq_lens,
                                                         scale, sliding_window, out);
    else
      decode_attention_impl<scalar_t, scalar_t, int32_t>(query, kv_cache, block_tables, seq_lens,
                                                         scale, sliding_window, out);
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// RMSNorm, optionally fused with the residual add.

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// 16 float32 lanes rounded to bf16 (nearest even) and widened back: what storing to bf16 and
// reading back gives
inline __m512 round_bf16(__m512 x) { return _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(x)); }

// One bf16 row of rms_norm_impl, N a multiple of 16, in two passes over the row in registers
// (the general path's arithmetic in its order: the sum rounded to bf16, the squares summed
// per lane then lane by lane, x * inv rounded before * w). The general path's four passes
// over float32 copies of the row took 1.6x as long (bench_cpu_elementwise_ab.py).
inline void rms_norm_row_bf16(const c10::BFloat16* x, const c10::BFloat16* res,
                              const c10::BFloat16* w, float eps, int64_t N, c10::BFloat16* out,
                              c10::BFloat16* res_out) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < N; i += 16) {
    __m512 v = load16(x + i);
    if (res != nullptr) {
      v = round_bf16(_mm512_add_ps(v, load16(res + i)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(res_out + i), (__m256i)_mm512_cvtneps_pbh(v));
    }
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
  float ss = 0.f;
  for (int j = 0; j < 16; ++j) ss += lanes[j];
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(ss / static_cast<float>(N) + eps));
  const c10::BFloat16* sum = res != nullptr ? res_out : x;  // the row normalised, as bf16
  for (int64_t i = 0; i < N; i += 16) {
    const __m512 v = round_bf16(_mm512_mul_ps(load16(sum + i), inv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(v, load16(w + i))));
  }
}
#endif

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
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (N % 16 == 0) {
        for (int64_t r = begin; r < end; ++r)
          rms_norm_row_bf16(xp + r * N, rp != nullptr ? rp + r * N : nullptr, wp, feps, N,
                            op + r * N, rp != nullptr ? res_out + r * N : nullptr);
        return;
      }
    }
#endif
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

// out[i] = silu(g[i]) * u[i] for g, u float32 holding T values: silu in float32 rounded to
// T, the product rounded to T (torch's roundings); g is overwritten. The arithmetic of
// silu_and_mul_impl's general path, shared with the GEMM that fuses it (linear_vnni_silu).
template <typename T>
inline void silu_mul_row(float* __restrict g, const float* __restrict u, T* out, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) g[i] = g[i] / (1.f + exp_f(-g[i]));
  round_to<T>(g, d);  // silu's result in T
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) g[i] *= u[i];
  store_f(g, out, d);
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)

// silu(g) * u on 16 lanes of bf16 values held as float32, rounded like silu_mul_row (the
// bf16 fast path of silu_and_mul_impl and linear_vnni_silu's epilogue).
inline __m256i silu_mul16_bf16(__m512 gv, __m512 uv) {
  const __m512 sv = _mm512_div_ps(
      gv, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
  const __m512 sr = round_bf16(sv);  // silu's result in bf16
  return (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(sr, uv));
}
#endif

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
#if defined(__AVX512F__) && defined(__AVX512BF16__)
      if constexpr (std::is_same_v<T, c10::BFloat16>) {  // 16 at a time (what the loops
        const T* xg = xp + r * 2 * d;                      // below do, explicitly vectorised)
        T* o = op + r * d;
        int64_t i = 0;
        for (; i + 16 <= d; i += 16)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i),
                              silu_mul16_bf16(load16<T>(xg + i), load16<T>(xg + d + i)));
        if (i == d) continue;
      }
#endif
      load_f(xp + r * 2 * d, g, d);
      load_f(xp + r * 2 * d + d, u, d);
      silu_mul_row(g, u, op + r * d, d);
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
#if defined(__AVX512F__) && defined(__AVX512BF16__)
// rotary_impl's rotate for one bf16 row of 2 * half values (half % 16 == 0), 16 lanes at a
// time: each product rounded to bf16 (round_bf16), then the difference / sum rounded, as there
inline void rotate_bf16(c10::BFloat16* row, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; i += 16) {
    const __m512 x1 = load16(row + i), x2 = load16(row + half + i);
    const __m512 cv = _mm512_loadu_ps(c + i), sv = _mm512_loadu_ps(s + i);
    const __m512 a = _mm512_sub_ps(round_bf16(_mm512_mul_ps(x1, cv)), round_bf16(_mm512_mul_ps(x2, sv)));
    const __m512 b = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, cv)), round_bf16(_mm512_mul_ps(x1, sv)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + i), (__m256i)_mm512_cvtneps_pbh(a));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + half + i), (__m256i)_mm512_cvtneps_pbh(b));
  }
}
#endif

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
#if defined(__AVX512F__) && defined(__AVX512BF16__)
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        if (half % 16 == 0) {  // the same arithmetic on 16 lanes (about 3x the loops above)
          for (int64_t h = 0; h < Hq; ++h) rotate_bf16(qp + t * qs0 + h * qs1, c.data(), s.data(), half);
          for (int64_t h = 0; h < Hk; ++h) rotate_bf16(kp + t * ks0 + h * ks1, c.data(), s.data(), half);
          continue;
        }
      }
#endif
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
              const at::Tensor& slot_mapping, double k_scale, double v_scale) {
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes() && kv_cache.dim() == 5 &&
              kv_cache.size(3) == key.size(1) && kv_cache.size(4) == key.size(2),
              "key/value [T, KVH, D] and kv_cache [2, N, B, KVH, D]");
  const bool to_fp8 = kv_cache.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK(value.scalar_type() == key.scalar_type() &&
              (to_fp8 ? key.scalar_type() == at::kBFloat16 || key.scalar_type() == at::kFloat
                      : key.scalar_type() == kv_cache.scalar_type()),
              "key and value share the cache's dtype, or are bf16/float32 for an FP8 cache");
  check_kv_scales(to_fp8, k_scale, v_scale);
  TORCH_CHECK(kv_cache.is_contiguous(), "kv_cache must be contiguous");
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1 && key.stride(1) == key.size(2) &&
              value.stride(1) == value.size(2), "each token's K/V heads must be contiguous");
  TORCH_CHECK(slot_mapping.is_contiguous() && slot_mapping.scalar_type() == at::kLong,
              "slot_mapping must be contiguous int64");
  const int64_t T_ = key.size(0), row = key.size(1) * key.size(2);
  const int64_t num_slots = kv_cache.size(1) * kv_cache.size(2);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < T_; ++t)  // all checked before anything is written
    TORCH_CHECK(slots[t] < num_slots, "slot ", slots[t], " is past the cache's ", num_slots,
                " slots");
  if (to_fp8) {
    fp8* ck = kv_cache.data_ptr<fp8>();
    fp8* cv = ck + kv_cache.stride(0);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, key.scalar_type(), "store_kv_fp8", [&] {
      const scalar_t* kp = key.data_ptr<scalar_t>();
      const scalar_t* vp = value.data_ptr<scalar_t>();
      at::parallel_for(0, T_, 64, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          if (slots[t] < 0) continue;
          quantize_fp8(kp + t * key.stride(0), static_cast<float>(k_scale), row, ck + slots[t] * row);
          quantize_fp8(vp + t * value.stride(0), static_cast<float>(v_scale), row, cv + slots[t] * row);
        }
      });
    });
    return;
  }
  const int64_t elem = kv_cache.element_size();
  const char* kp = static_cast<const char*>(key.data_ptr());
  const char* vp = static_cast<const char*>(value.data_ptr());
  char* ck = static_cast<char*>(kv_cache.data_ptr());
  char* cv = ck + kv_cache.stride(0) * elem;
  const int64_t ks = key.stride(0) * elem, vs = value.stride(0) * elem, bytes = row * elem;
  // the threads share a prefill's tokens; a decode step's few rows stay on one thread
  at::parallel_for(0, T_, 256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      std::memcpy(ck + slot * bytes, kp + t * ks, bytes);
      std::memcpy(cv + slot * bytes, vp + t * vs, bytes);
    }
  });
}


// ---------------------------------------------------------------------------------------
// bf16 GEMM products on a packed block: [K / 2][PACK_N][2] bf16, PACK_N columns with pairs of
// consecutive k side by side (the VNNI layout torch's ukernel reads). The prefill attention
// and the linear layers multiply through torch's batch-reduce GEMM ukernel
// (at::native::cpublas::brgemm: oneDNN's, on the matrix units) where it packs bf16 (AMX);
// on a CPU with AVX512-BF16 and no AMX (AMD Zen 4 and later, Intel Cooper Lake), where it
// does not, through avx_gemm_block below.
constexpr int64_t PACK_N = 64;  // columns of a packed block (the ukernel's largest packed N)
#if defined(__AVX512F__) && defined(__AVX512BF16__)
constexpr bool kAvxGemm = true;
#else
constexpr bool kAvxGemm = false;
#endif

// Whether torch's ukernel packs bf16 here: a fact of the CPU, asked of oneDNN once (every
// GEMM call consults it).
bool ukernel_packs_bf16() {
  static const bool packs = at::native::cpublas::could_pack(at::kBFloat16);
  return packs;
}

// Whether either multiplies bf16 here (linear_supported, prefill_supported).
bool native_bf16_gemm() { return kAvxGemm || ukernel_packs_bf16(); }

// Which of the two multiplies bf16 here (the start-up log says it): "ukernel" (torch's, on the
// matrix units), "avx512_bf16" (avx_gemm_block) or "none" (linear_vnni and the native prefill
// attention unsupported: oneDNN's prepacked GEMM and the torch attention serve instead).
std::string bf16_gemm_path() {
  return ukernel_packs_bf16() ? "ukernel" : kAvxGemm ? "avx512_bf16" : "none";
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// c [R, 16 NV] (row stride ldc floats; add: +=) = a [R, 2 K2] (row stride lda) times 16 NV columns of
// a packed block (b: the block plus twice the first column; rows of 2 * PACK_N bf16 per
// k-pair). R x NV float32 accumulators stay in registers over all of K: per k-pair, NV
// vectors of the block are loaded once and each row's pair broadcast against them with the
// bf16 dot-product instruction (two products summed into each float32 lane).
template <int R, int NV>
inline void avx_gemm_tile(int64_t K2, const at::BFloat16* a, int64_t lda, const at::BFloat16* b,
                          float* c, int64_t ldc, bool add) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = add ? _mm512_loadu_ps(c + r * ldc + v * 16) : _mm512_setzero_ps();
  const int32_t* ap = reinterpret_cast<const int32_t*>(a);
  const int64_t lda2 = lda / 2;
  for (int64_t p = 0; p < K2; ++p) {
    const at::BFloat16* bp = b + p * 2 * PACK_N;
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bp + v * 32);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(ap[r * lda2 + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + v * 16, acc[r][v]);
}

#endif

// Calls tile(std::integral_constant<int, R>{}, r0) over rows [0, m): tiles of RT rows, then
// the rest as one tile of 1-5 rows, or halved until the halves are (the register tiles of
// avx_gemm_rows and avx_int8_rows, whose accumulators fill up to 24 of the 32 registers).
template <int RT, typename Tile>
inline void for_row_tiles(int64_t m, int64_t r0, Tile&& tile) {
  int64_t r = r0;
  for (; r + RT <= r0 + m; r += RT) tile(std::integral_constant<int, RT>{}, r);
  const int64_t rest = r0 + m - r;
  switch (rest) {
    case 0: break;
    case 1: tile(std::integral_constant<int, 1>{}, r); break;
    case 2: tile(std::integral_constant<int, 2>{}, r); break;
    case 3: tile(std::integral_constant<int, 3>{}, r); break;
    case 4: tile(std::integral_constant<int, 4>{}, r); break;
    case 5: tile(std::integral_constant<int, 5>{}, r); break;
    default:  // RT 12: 6-11 rows left
      if constexpr (RT > 6) {
        const int64_t h = rest / 2;
        for_row_tiles<RT>(h, r, tile);
        for_row_tiles<RT>(rest - h, r + h, tile);
      }
  }
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
template <int NV>
inline void avx_gemm_rows(int64_t m, int64_t K2, const at::BFloat16* a, int64_t lda,
                          const at::BFloat16* b, float* c, int64_t ldc, bool add) {
  for_row_tiles<24 / NV>(m, 0, [&](auto R, int64_t r) {
    avx_gemm_tile<decltype(R)::value, NV>(K2, a + r * lda, lda, b, c + r * ldc, ldc, add);
  });
}

// c [m, nc] (row stride ldc; add: +=) = a [m, K] (row stride lda, K even) times columns
// [c0, c0 + nc) of one packed block ([K / 2][64][2]; c0 a multiple of 32, nc 32 or 64).
inline void avx_gemm_block(int64_t m, int64_t K, const at::BFloat16* a, int64_t lda,
                           const at::BFloat16* blk, int64_t c0, int64_t nc, float* c, int64_t ldc,
                           bool add) {
  if (nc == PACK_N)
    avx_gemm_rows<4>(m, K / 2, a, lda, blk + 2 * c0, c, ldc, add);
  else
    avx_gemm_rows<2>(m, K / 2, a, lda, blk + 2 * c0, c, ldc, add);
}
#else
inline void avx_gemm_block(int64_t, int64_t, const at::BFloat16*, int64_t, const at::BFloat16*,
                           int64_t, int64_t, float*, int64_t, bool) {}
#endif

// src [K, N] (row stride ld, K even; N = PACK_N) into a packed block [K / 2][N][2]: the
// ukernel's own pack where it serves, else the same layout by hand for avx_gemm_block.
inline void pack_block(int64_t K, int64_t N, const at::BFloat16* src, int64_t ld,
                       at::BFloat16* dst, bool ukernel) {
  if (ukernel) {
    at::native::cpublas::pack(K, N, ld, N, at::kBFloat16, at::kBFloat16, src, dst);
    return;
  }
  for (int64_t k = 0; k < K; k += 2) {
    const at::BFloat16* r0 = src + k * ld;
    const at::BFloat16* r1 = r0 + ld;
    at::BFloat16* d = dst + k * N;
    for (int64_t n = 0; n < N; ++n) {
      d[2 * n] = r0[n];
      d[2 * n + 1] = r1[n];
    }
  }
}

// One GEMM product, by whichever of the two serves here: c [m, nc] (row stride ldc; add: +=)
// = a [m, K] (row stride lda) times columns [c0, c0 + nc) of a packed block.
inline void block_product(int64_t m, int64_t K, const at::BFloat16* a, int64_t lda,
                          const at::BFloat16* blk, int64_t c0, int64_t nc, float* c, int64_t ldc,
                          bool add, bool ukernel) {
  if (ukernel)
    at::native::cpublas::brgemm(m, nc, K, lda, PACK_N, ldc, add, a, blk + 2 * c0, c, true);
  else
    avx_gemm_block(m, K, a, lda, blk, c0, nc, c, ldc, add);
}

// ---------------------------------------------------------------------------------------
// Prefill / extend attention over the paged cache, bf16, flash-style on the CPU's matrix
// units through torch's batch-reduce GEMM (at::native::cpublas::brgemm: oneDNN's ukernel,
// bf16 x bf16 -> float32, AMX where the CPU has it; usable only where
// cpublas::could_pack(bf16), which the caller checks through ``prefill_supported``).
//
// query [T, H, D]: the new tokens of every sequence, packed (sequence s owns rows
// [query_start_loc[s], query_start_loc[s+1])); seq_lens [S]: keys per sequence, the new ones
// included (they are already in the cache), so the new tokens sit at positions
// [len - q_len, len). kv_cache [2, N, B, KVH, D]; block_tables [S, max_blocks]; all indices
// int64. Row i of a sequence sees keys [max(0, pos - window + 1), pos] (window 0: all).
//
// Two phases, each parallel:
//  1. per (sequence, KV head, chunk of PF_KC keys): K^T and V gathered from the cache and
//     packed into the GEMM's operand layout (VNNI), zero past the last key;
//  2. per (sequence, KV head, tile of query tokens): the tile's G heads x tokens rows are one
//     GEMM operand (M = G * tile rows); per visible key chunk S = Q K^T (float32), scale,
//     mask, an online-softmax update (running max and sum per row, the output rescaled), P
//     rounded to bf16 and O += P V (float32); finally O / sum, stored as bf16.
// Numerics: float32 scores and accumulation, P in bf16 for the second GEMM (as flash
// attention kernels do); the torch path it replaces is within bf16 rounding of it.
constexpr int64_t PF_KC = 64;       // keys per packed chunk (the ukernel's largest packed N)
constexpr int64_t PF_DS = 64;       // head-dim slice of the P @ V GEMM (its N)
constexpr int64_t PF_ROWS = 128;    // target GEMM rows per query tile (G heads x tokens)

static_assert(PF_KC == PACK_N && PF_DS == PACK_N, "chunks of one packed block");

bool prefill_supported(int64_t head_dim) {
  return head_dim % PF_DS == 0 && head_dim <= 512 && native_bf16_gemm();
}

// One query row's online-softmax update over a chunk of PF_KC scores: the visible scores
// [lo, hi) scaled, the row's running max m moved to cover them, sr[j] = exp(score - max)
// (0 outside [lo, hi)), written to pr as bf16; returns (correction of the old sums, sum).
// softmax_update's job for a fixed-size chunk, kept separate on purpose: the chunk stays in
// registers and the bf16 store is fused (folding both into softmax_update measured 1.28x
// slower prefill attention at 512 tokens and 1.06x slower decode attention).
template <int64_t KC>
inline std::pair<float, float> chunk_row_softmax(float* __restrict sr, at::BFloat16* __restrict pr,
                                                 int64_t lo, int64_t hi, float fscale, float& m) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  static_assert(KC % 16 == 0, "whole vectors");
  constexpr int64_t NV = KC / 16;
  __m512 x[NV];
  __mmask16 live[NV];
  __m512 vmax = _mm512_set1_ps(m);
  for (int64_t v = 0; v < NV; ++v) {
    const int64_t a = std::clamp<int64_t>(lo - v * 16, 0, 16), b = std::clamp<int64_t>(hi - v * 16, 0, 16);
    live[v] = static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
    x[v] = _mm512_mul_ps(_mm512_loadu_ps(sr + v * 16), _mm512_set1_ps(fscale));
    vmax = _mm512_mask_max_ps(vmax, live[v], vmax, x[v]);
  }
  const float bmax = _mm512_reduce_max_ps(vmax);
  const __m512 vb = _mm512_set1_ps(bmax);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t v = 0; v < NV; ++v) {
    const __m512 e = _mm512_maskz_mov_ps(live[v], exp16(_mm512_sub_ps(x[v], vb)));
    vsum = _mm512_add_ps(vsum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + v * 16), (__m256i)_mm512_cvtneps_pbh(e));
  }
  const float corr = corr_exp(m, bmax);
  m = bmax;
  return {corr, _mm512_reduce_add_ps(vsum)};
#else
  float bmax = m;
  for (int64_t j = lo; j < hi; ++j) bmax = std::max(bmax, sr[j] * fscale);
  float sum = 0.f;
  for (int64_t j = 0; j < KC; ++j) {
    sr[j] = (j >= lo && j < hi) ? exp_f(sr[j] * fscale - bmax) : 0.f;
    sum += sr[j];
  }
  store_f(sr, pr, KC);
  const float corr = corr_exp(m, bmax);
  m = bmax;
  return {corr, sum};
#endif
}

// C: the cache's element type, bf16 or FP8 (read back times k_scale / v_scale while packing,
// rounded to bf16 as kv_quant.dequantize_kv_ref does).
template <typename C>
void prefill_attention_impl(const at::Tensor& query, const at::Tensor& kv_cache,
                            const at::Tensor& block_tables, const at::Tensor& query_start_loc,
                            const at::Tensor& seq_lens, double scale, int64_t window,
                            at::Tensor& out, double k_scale, double v_scale) {
  constexpr bool kFp8 = std::is_same_v<C, fp8>;
  using bf16 = at::BFloat16;
  namespace cpublas = at::native::cpublas;
  const int64_t S = seq_lens.size(0), H = query.size(1), D = query.size(2);
  const int64_t BS = kv_cache.size(2), KVH = kv_cache.size(3), G = H / KVH;
  const int64_t max_blocks = block_tables.size(1);
  const int64_t* qsl = query_start_loc.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const C* k_base = kv_cache.data_ptr<C>();
  const C* v_base = k_base + kv_cache.stride(0);
  const int64_t s_blk = kv_cache.stride(1), s_tok = kv_cache.stride(2), s_head = kv_cache.stride(3);
  const bf16* q_ptr = query.data_ptr<bf16>();
  bf16* o_ptr = out.data_ptr<bf16>();
  const int64_t qs0 = query.stride(0), qs1 = query.stride(1);
  const int64_t os0 = out.stride(0), os1 = out.stride(1);
  const float fscale = static_cast<float>(scale);
  // query tokens per tile: about PF_ROWS / G, a power of two so that a prompt's tiles (from
  // its first token) end where chunks of PF_KC keys do: a tile's last chunk is then no more
  // than its causal diagonal (42-token tiles at G = 3 computed 1.26x the visible scores over
  // the offline workload's prompts, 64-token ones 1.19x; 1.01-1.06x, docs/benchmarks.md run 18)
  int64_t TQ = 1;
  while (TQ * G < PF_ROWS) TQ *= 2;
  const int64_t chunk_elems = D * PF_KC;  // packed K^T chunk and packed V chunk alike
  const int64_t n_slices = D / PF_DS;
  const bool ukernel = ukernel_packs_bf16();  // else avx_gemm_block

  // chunks per sequence, their offsets; query tiles per sequence
  std::vector<int64_t> chunk_off(S + 1, 0), tile_off(S + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t q_len = qsl[s + 1] - qsl[s];
    const int64_t n_chunks = q_len > 0 ? (lens[s] + PF_KC - 1) / PF_KC : 0;
    chunk_off[s + 1] = chunk_off[s] + n_chunks;
    tile_off[s + 1] = tile_off[s] + (q_len + TQ - 1) / TQ;
  }
  const int64_t total_chunks = chunk_off[S];
  if (total_chunks == 0) return;
  at::Tensor kp = at::empty({KVH, total_chunks, chunk_elems}, query.options());
  at::Tensor vp = at::empty({KVH, total_chunks, chunk_elems}, query.options());
  bf16* kp_ptr = kp.data_ptr<bf16>();
  bf16* vp_ptr = vp.data_ptr<bf16>();

  // 1. gather + pack: task = (KV head, global chunk)
  at::parallel_for(0, KVH * total_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<bf16> kt(D * PF_KC), vt(PF_KC * D), krow(kFp8 ? D : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kvh = task / total_chunks, c = task % total_chunks;
      const int64_t s = std::upper_bound(chunk_off.begin(), chunk_off.end(), c) - chunk_off.begin() - 1;
      const int64_t k0 = (c - chunk_off[s]) * PF_KC, len = lens[s];
      const int64_t* table = bt + s * max_blocks;
      for (int64_t j = 0; j < PF_KC; ++j) {
        const int64_t key = k0 + j;
        if (key < len) {
          const int64_t off = table[key / BS] * s_blk + (key % BS) * s_tok + kvh * s_head;
          const bf16* kr;
          if constexpr (kFp8) {
            fp8_rows_to_bf16(k_base + off, 0, 1, D, static_cast<float>(k_scale), krow.data());
            fp8_rows_to_bf16(v_base + off, 0, 1, D, static_cast<float>(v_scale), vt.data() + j * D);
            kr = krow.data();
          } else {
            kr = k_base + off;
            std::memcpy(vt.data() + j * D, v_base + off, D * sizeof(bf16));
          }
          for (int64_t d = 0; d < D; ++d) kt[d * PF_KC + j] = kr[d];
        } else {
          for (int64_t d = 0; d < D; ++d) kt[d * PF_KC + j] = bf16(0.f);
          std::memset(vt.data() + j * D, 0, D * sizeof(bf16));
        }
      }
      bf16* kdst = kp_ptr + (kvh * total_chunks + c) * chunk_elems;
      bf16* vdst = vp_ptr + (kvh * total_chunks + c) * chunk_elems;
      pack_block(D, PF_KC, kt.data(), PF_KC, kdst, ukernel);
      for (int64_t sl = 0; sl < n_slices; ++sl)
        pack_block(PF_KC, PF_DS, vt.data() + sl * PF_DS, D, vdst + sl * PF_KC * PF_DS, ukernel);
    }
  });

  // 2. attention: task = (sequence's query tile, KV head), shared out in order (a sequence's
  // tiles read the same packed chunks; a fixed split by rows x keys seen, contiguous runs
  // per thread, left one thread waiting: 1.01-1.05x, docs/benchmarks.md run 18)
  const int64_t total_tiles = tile_off[S];
  SharedTasks tasks = SharedTasks::in_order(total_tiles * KVH);
  at::parallel_for(0, tasks.threads(), 1, [&](int64_t, int64_t) {
    const int64_t M_max = TQ * G;
    std::vector<bf16> a(M_max * D), p(M_max * PF_KC);
    std::vector<float> sc(M_max * PF_KC), o(M_max * D), m(M_max), l(M_max);
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t task = tasks.next(); task >= 0; task = tasks.next()) {
      const int64_t tile = task / KVH, kvh = task % KVH;
      const int64_t s = std::upper_bound(tile_off.begin(), tile_off.end(), tile) - tile_off.begin() - 1;
      const int64_t q0 = qsl[s], q_len = qsl[s + 1] - q0, len = lens[s];
      const int64_t context = len - q_len;
      const int64_t i0 = (tile - tile_off[s]) * TQ, i1 = std::min(q_len, i0 + TQ);
      const int64_t M = (i1 - i0) * G;
      for (int64_t t = i0; t < i1; ++t)  // rows (token, head): a token's G heads are adjacent
        for (int64_t g = 0; g < G; ++g)
          std::memcpy(a.data() + ((t - i0) * G + g) * D, q_ptr + (q0 + t) * qs0 + (kvh * G + g) * qs1,
                      D * sizeof(bf16));
      std::fill(o.begin(), o.begin() + M * D, 0.f);
      std::fill(m.begin(), m.begin() + M, neg_inf);
      std::fill(l.begin(), l.begin() + M, 0.f);
      const int64_t first_key = window > 0 ? std::max<int64_t>(0, context + i0 - window + 1) : 0;
      const int64_t last_key = context + i1;  // exclusive
      const bf16* kseq = kp_ptr + (kvh * total_chunks + chunk_off[s]) * chunk_elems;
      const bf16* vseq = vp_ptr + (kvh * total_chunks + chunk_off[s]) * chunk_elems;
      for (int64_t c = first_key / PF_KC; c * PF_KC < last_key; ++c) {
        const int64_t k0 = c * PF_KC;
        block_product(M, D, a.data(), D, kseq + c * chunk_elems, 0, PF_KC, sc.data(), PF_KC,
                      false, ukernel);
        for (int64_t r = 0; r < M; ++r) {
          const int64_t pos = context + i0 + r / G;
          const int64_t lo = std::max<int64_t>(window > 0 ? pos - window + 1 : 0, k0) - k0;
          const int64_t hi = std::min<int64_t>(pos + 1, k0 + PF_KC) - k0;  // visible [lo, hi)
          float* sr = sc.data() + r * PF_KC;
          bf16* pr = p.data() + r * PF_KC;
          if (hi <= lo) {  // this row sees nothing here
            std::memset(pr, 0, PF_KC * sizeof(bf16));
            continue;
          }
          const auto [corr, sum] = chunk_row_softmax<PF_KC>(sr, pr, lo, hi, fscale, m[r]);
          l[r] = l[r] * corr + sum;
          if (corr == 1.f) continue;  // the max did not move
          float* orow = o.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) orow[d] *= corr;
        }
        for (int64_t sl = 0; sl < n_slices; ++sl)
          block_product(M, PF_KC, p.data(), PF_KC, vseq + c * chunk_elems + sl * PF_KC * PF_DS, 0,
                        PF_DS, o.data() + sl * PF_DS, D, true, ukernel);
      }
      for (int64_t r = 0; r < M; ++r) {
        const int64_t t = i0 + r / G, g = r % G;
        float* orow = o.data() + r * D;
        const float inv = 1.f / l[r];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) orow[d] *= inv;
        store_f(orow, o_ptr + (q0 + t) * os0 + (kvh * G + g) * os1, D);
      }
    }
    if (ukernel) cpublas::brgemm_release(true);
  });
}

at::Tensor prefill_attention(const at::Tensor& query, const at::Tensor& kv_cache,
                             const at::Tensor& block_tables, const at::Tensor& query_start_loc,
                             const at::Tensor& seq_lens, double scale, int64_t sliding_window,
                             at::Tensor out, double k_scale, double v_scale) {
  TORCH_CHECK(query.dim() == 3 && kv_cache.dim() == 5, "query [T, H, D], kv_cache [2, N, B, KVH, D]");
  const bool fp8_cache = kv_cache.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK(query.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kBFloat16 &&
              (fp8_cache || kv_cache.scalar_type() == at::kBFloat16),
              "query and out must be bfloat16, kv_cache bfloat16 or FP8 (float8_e4m3fn)");
  check_kv_scales(fp8_cache, k_scale, v_scale);
  TORCH_CHECK(query.stride(2) == 1 && kv_cache.stride(4) == 1 && out.stride(2) == 1 &&
              out.sizes() == query.sizes(), "the head dimension must be contiguous; out like query");
  TORCH_CHECK(prefill_supported(query.size(2)), "head_dim ", query.size(2), " needs a multiple of ",
              PF_DS, " and a CPU whose GEMM ukernel packs bf16 (prefill_supported)");
  TORCH_CHECK(query.size(1) % kv_cache.size(3) == 0, "query heads must be a multiple of KV heads");
  for (const at::Tensor* t : {&block_tables, &query_start_loc, &seq_lens})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kLong,
                "block_tables, query_start_loc and seq_lens must be contiguous int64");
  TORCH_CHECK(query_start_loc.size(0) == seq_lens.size(0) + 1 &&
              block_tables.size(0) >= seq_lens.size(0), "a start per sequence (+1), a table each");
  const int64_t* qsl = query_start_loc.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  for (int64_t s = 0; s < seq_lens.size(0); ++s) {  // everything checked before any work
    const int64_t q_len = qsl[s + 1] - qsl[s];
    TORCH_CHECK(q_len >= 0 && qsl[s + 1] <= query.size(0) && lens[s] >= q_len &&
                (lens[s] + kv_cache.size(2) - 1) / kv_cache.size(2) <= block_tables.size(1),
                "sequence ", s, ": query rows, length and block table disagree");
  }
  if (fp8_cache)
    prefill_attention_impl<fp8>(query, kv_cache, block_tables, query_start_loc, seq_lens, scale,
                                sliding_window, out, k_scale, v_scale);
  else
    prefill_attention_impl<at::BFloat16>(query, kv_cache, block_tables, query_start_loc, seq_lens,
                                         scale, sliding_window, out, 1.0, 1.0);
  return out;
}

// ---------------------------------------------------------------------------------------
// bf16 linear y = x W^T (+ bias) on the CPU's matrix units through the same GEMM ukernel
// (at::native::cpublas::brgemm, bf16 x bf16 -> float32), on a weight packed once at load
// (kernels/cpu_linear.py ``pack_vnni``): [N_pad / 64, K / 2, 64, 2], each block of 64 output
// columns the ukernel's VNNI layout of W^T, rows past N zero.
//
// x [M, K] bf16 contiguous; tasks (tile of at most LN_MT rows, the tiles of one GEMM alike
// in size so that the threads' even split of the tasks is an even split of the work; block
// of 64 columns), consecutive tasks sharing the row tile, split evenly over the threads.
// Each task: one product (block_product; float32 out), then + bias and rounded to bf16
// (nearest even). Against oneDNN's prepacked
// GEMM it streams the weight faster for few rows (a decode step) and is slower for
// thousands (benchmarks/results/cpu_brgemm_linear.json); the layer ships it where it wins
// (docs/kernels.md).
constexpr int64_t LN_NB = PACK_N;  // output columns per packed block
constexpr int64_t LN_MT = 512;  // rows per task (a ukernel call)

bool linear_supported(int64_t in_features) {
  return in_features % 2 == 0 && native_bf16_gemm();
}

// A decode step's GEMM (at most LN_AMX_ROWS rows) on the matrix units directly. The ukernel's
// time at 64 rows was about the sum of streaming the weight (its time at one row) and the
// arithmetic (its time on a cache-resident weight): SmolLM2's gate_up 336 us against 180 at
// one row and 156 resident, nothing overlapping the two. Here each block's k-steps also
// prefetch, into L2, the block the thread multiplies next, a share per step (bursts of
// prefetches between ukernel calls measured slower; the L1 hint slower than L2), so the next
// weight streams while the tiles compute. Same products in the same order as the ukernel:
// bit-equal. Every tile is 16 rows of 64 bytes: C 0-3 (float32, 2 x 2 tiles of 16 x 16),
// A 4-5 (16 rows x 32 k), B 6-7 (16 k-pairs x 16 columns of the packed block); rows are
// padded to whole tiles.
constexpr int64_t LN_AMX_ROWS = 64;

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
bool amx_gemm_usable(int64_t M, int64_t K) {
  return M <= LN_AMX_ROWS && K % 32 == 0 && amx_permitted();
}
inline void amx_gemm_begin() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// c [Mp, nc] (row stride ldc floats) = a [Mp, K] (row stride lda, Mp a multiple of 16) times
// columns [c0, c0 + nc) of one packed block ([K / 2][64][2]; c0 and nc multiples of 32, K of
// 32), prefetching the pf_lines cache lines at `next` (nullptr: none) over the k-steps.
inline void amx_gemm_block(int64_t Mp, int64_t K, const at::BFloat16* a, int64_t lda,
                           const at::BFloat16* blk, int64_t c0, int64_t nc, float* c, int64_t ldc,
                           const char* next, int64_t pf_lines) {
  const int64_t ksteps = K / 32;
  const int64_t steps = (Mp + 31) / 32 * (nc / 32) * ksteps;
  const int64_t per_step = next != nullptr ? (pf_lines + steps - 1) / steps : 0;
  const int64_t a_stride = lda * static_cast<int64_t>(sizeof(at::BFloat16));
  int64_t pf = 0;
  for (int64_t r0 = 0; r0 < Mp; r0 += 32) {
    const bool two = r0 + 16 < Mp;
    const at::BFloat16* a0 = a + r0 * lda;
    for (int64_t cg = c0; cg < c0 + nc; cg += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < ksteps; ++k) {
        const at::BFloat16* bk = blk + k * 16 * 2 * LN_NB + cg * 2;
        _tile_loadd(4, a0 + k * 32, a_stride);
        _tile_loadd(6, bk, 4 * LN_NB);
        _tile_loadd(7, bk + 32, 4 * LN_NB);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, a0 + 16 * lda + k * 32, a_stride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        for (const int64_t e = std::min(pf + per_step, pf_lines); pf < e; ++pf)
          _mm_prefetch(next + pf * 64, _MM_HINT_T1);
      }
      float* cc = c + r0 * ldc + (cg - c0);
      const int64_t c_stride = ldc * static_cast<int64_t>(sizeof(float));
      _tile_stored(0, cc, c_stride);
      _tile_stored(1, cc + 16, c_stride);
      if (two) {
        _tile_stored(2, cc + 16 * ldc, c_stride);
        _tile_stored(3, cc + 16 * ldc + 16, c_stride);
      }
    }
  }
}
#else
bool amx_gemm_usable(int64_t, int64_t) { return false; }
inline void amx_gemm_begin() {}
inline void amx_gemm_block(int64_t, int64_t, const at::BFloat16*, int64_t, const at::BFloat16*,
                           int64_t, int64_t, float*, int64_t, const char*, int64_t) {}
#endif

// A GEMM's rows as amx_gemm_block takes them, where it is used (a decode step's rows,
// amx_gemm_usable): x itself where its rows fill whole tiles, else a copy padded with zero
// rows to Mp; elsewhere x and M as they are.
struct DirectRows {
  bool used;
  int64_t Mp;                     // rows, padded to whole tiles where used
  int64_t block_lines;            // a packed block: K * 64 bf16, in 64-byte lines
  std::vector<at::BFloat16> pad;  // the padded copy, where one is needed
  const at::BFloat16* a;
  DirectRows(const at::BFloat16* x, int64_t M, int64_t K)
      : used(amx_gemm_usable(M, K)), Mp(used ? (M + 15) / 16 * 16 : M), block_lines(2 * K), a(x) {
    if (Mp == M) return;
    pad.assign(Mp * K, at::BFloat16(0.f));
    std::memcpy(pad.data(), x, M * K * sizeof(at::BFloat16));
    a = pad.data();
  }
};

// y [M, N] = x [M, K] @ W^T (+ bias), inputs checked by the caller.
void linear_vnni_impl(const at::Tensor& x, const at::Tensor& packed, int64_t N,
                      const at::BFloat16* bias_ptr, at::Tensor& y) {
  using bf16 = at::BFloat16;
  const int64_t M = x.size(0), K = x.size(1), nb = packed.size(0);
  if (M == 0) return;
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = packed.data_ptr<bf16>();
  bf16* yp = y.data_ptr<bf16>();
  const int64_t mt = (M + LN_MT - 1) / LN_MT, mr = (M + mt - 1) / mt;  // row tiles alike
  const DirectRows direct(xp, M, K);  // a decode step's rows: the direct kernel
  const bool amx = direct.used, ukernel = !amx && ukernel_packs_bf16();
  const int64_t Mp = direct.Mp;
  // columns [c0, c0 + nc) of rows [m0, m0 + m): c0 a multiple of 32, nc 32 or 64 within a
  // block; `next` the block this thread multiplies after it (prefetched by the direct kernel)
  auto product = [&](int64_t m0, int64_t m, int64_t c0, int64_t nc, float* c, float* row,
                     int64_t next) {
    if (c0 >= N) return;  // the padding of the last block
    const int64_t b = c0 / LN_NB, half = c0 % LN_NB;
    if (amx) {
      const bool pf = next >= 0 && next < nb && next != b;
      amx_gemm_block(Mp, K, direct.a, K, wp + b * K * LN_NB, half, nc, c, nc,
                     pf ? reinterpret_cast<const char*>(wp + next * K * LN_NB) : nullptr,
                     direct.block_lines);
    } else {
      block_product(m, K, xp + m0 * K, K, wp + b * K * LN_NB, half, nc, c, nc, false, ukernel);
    }
    const int64_t nn = std::min(nc, N - c0);
    for (int64_t i = 0; i < m; ++i) {
      const float* ci = c + i * nc;
      if (bias_ptr != nullptr) {
        load_f(bias_ptr + c0, row, nn);
#pragma omp simd
        for (int64_t j = 0; j < nn; ++j) row[j] += ci[j];
        ci = row;
      }
      store_f(ci, yp + (m0 + i) * N + c0, nn);
    }
  };
  if (mt == 1 && nb % 2 == 1 && at::get_num_threads() > 1) {
    // one row tile (a decode step) and an odd number of blocks: the threads share the columns
    // in halves of 32, whole blocks where a thread's run covers both halves (9 blocks over 2
    // threads: 4.5 each, not 5 and 4)
    at::parallel_for(0, 2 * nb, 1, [&](int64_t u0, int64_t u1) {
      std::vector<float> c(Mp * LN_NB), row(LN_NB);
      if (amx) amx_gemm_begin();
      for (int64_t u = u0; u < u1;) {
        const int64_t nu = u % 2 == 0 && u + 1 < u1 ? 2 : 1;
        const int64_t next = u + nu < u1 ? (u + nu) / 2 : -1;
        product(0, M, u * (LN_NB / 2), nu * (LN_NB / 2), c.data(), row.data(), next);
        u += nu;
      }
      amx_tiles_end(amx);
    });
    return;
  }
  at::parallel_for(0, nb * mt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> c(std::min(Mp, mr) * LN_NB);
    std::vector<float> row(LN_NB);
    if (amx) amx_gemm_begin();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nb, m0 = (t / nb) * mr;
      product(m0, std::min(mr, M - m0), b * LN_NB, LN_NB, c.data(), row.data(),
              t + 1 < t1 ? (t + 1) % nb : -1);
    }
    amx_tiles_end(amx);
  });
}

// y [M, inter] = silu(x Wg^T + bg) * (x Wu^T + bu) on a gate_up weight packed as
// linear_vnni's (gate rows, then up rows; inter a multiple of 64, so gate block b and up
// block b + inter / 64 hold the same output columns). A task multiplies one block of each,
// rounds both products to bf16 as linear_vnni stores them, then applies silu_and_mul's
// arithmetic: the unfused pair's result bit for bit, without writing the [M, 2 inter]
// product to memory and reading it back (at prefill's thousands of rows, more than the
// caches hold). Inputs checked by the caller.
void linear_vnni_silu_impl(const at::Tensor& x, const at::Tensor& packed, int64_t inter,
                           const at::BFloat16* bias_ptr, at::Tensor& y) {
  using bf16 = at::BFloat16;
  const int64_t M = x.size(0), K = x.size(1), nbg = inter / LN_NB;
  if (M == 0) return;
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = packed.data_ptr<bf16>();
  bf16* yp = y.data_ptr<bf16>();
  const int64_t mt = (M + LN_MT - 1) / LN_MT, mr = (M + mt - 1) / mt;  // row tiles alike
  const DirectRows direct(xp, M, K);  // a decode step's rows: the direct kernel
  const bool amx = direct.used, ukernel = !amx && ukernel_packs_bf16();
  const int64_t Mp = direct.Mp;
  auto block = [&](int64_t b) { return wp + b * K * LN_NB; };
  at::parallel_for(0, nbg * mt, 1, [&](int64_t t0, int64_t t1) {
    const int64_t rows = std::min(Mp, mr);
    std::unique_ptr<float[]> cg(new float[rows * LN_NB]), cu(new float[rows * LN_NB]);
    if (amx) amx_gemm_begin();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nbg, m0 = (t / nbg) * mr, m = std::min(mr, M - m0);
      if (amx) {  // gate block b while the up block streams in, then the next task's gate
        amx_gemm_block(Mp, K, direct.a, K, block(b), 0, LN_NB, cg.get(), LN_NB,
                       reinterpret_cast<const char*>(block(b + nbg)), direct.block_lines);
        amx_gemm_block(Mp, K, direct.a, K, block(b + nbg), 0, LN_NB, cu.get(), LN_NB,
                       t + 1 < t1 ? reinterpret_cast<const char*>(block((t + 1) % nbg)) : nullptr,
                       direct.block_lines);
      } else {
        block_product(m, K, xp + m0 * K, K, block(b), 0, LN_NB, cg.get(), LN_NB, false, ukernel);
        block_product(m, K, xp + m0 * K, K, block(b + nbg), 0, LN_NB, cu.get(), LN_NB, false,
                      ukernel);
      }
      const int64_t n0 = b * LN_NB;
      for (int64_t i = 0; i < m; ++i) {
        const float* ci = cg.get() + i * LN_NB;
        const float* ui = cu.get() + i * LN_NB;
        bf16* o = yp + (m0 + i) * inter + n0;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        for (int64_t j = 0; j < LN_NB; j += 16) {  // silu_and_mul_impl's bf16 path on the
          __m512 gv = _mm512_loadu_ps(ci + j), uv = _mm512_loadu_ps(ui + j);  // products
          if (bias_ptr != nullptr) {  // rounded to bf16 as linear_vnni stores them
            gv = _mm512_add_ps(gv, load16(bias_ptr + n0 + j));
            uv = _mm512_add_ps(uv, load16(bias_ptr + inter + n0 + j));
          }
          gv = round_bf16(gv);
          uv = round_bf16(uv);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), silu_mul16_bf16(gv, uv));
        }
#else
        alignas(64) float g[LN_NB], u[LN_NB];
        std::copy(ci, ci + LN_NB, g);  // the products as linear_vnni stores them
        std::copy(ui, ui + LN_NB, u);
        if (bias_ptr != nullptr) {
          for (int64_t j = 0; j < LN_NB; ++j) {
            g[j] += static_cast<float>(bias_ptr[n0 + j]);
            u[j] += static_cast<float>(bias_ptr[inter + n0 + j]);
          }
        }
        round_to<bf16>(g, LN_NB);
        round_to<bf16>(u, LN_NB);
        silu_mul_row(g, u, o, LN_NB);
#endif
      }
    }
    amx_tiles_end(amx);
  });
}

bool linear_silu_supported(int64_t in_features, int64_t inter) {
  return linear_supported(in_features) && inter > 0 && inter % LN_NB == 0;
}

// A GEMM's rows as the native linears take them (linear_vnni, linear_int8 and their SiLU forms).
void check_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16,
              "x must be a contiguous [M, K] bfloat16 matrix");
}

// y [M, N] newly allocated, inputs checked by the caller
at::Tensor linear_vnni_unchecked(const at::Tensor& x, const at::Tensor& packed, int64_t N,
                                 const c10::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  linear_vnni_impl(x, packed, N, bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr, y);
  return y;
}

void check_bias(const c10::optional<at::Tensor>& bias, int64_t out_features, const char* what) {
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->is_contiguous() &&
                bias->scalar_type() == at::kBFloat16, what, ": the bias must be a contiguous bf16 [N]");
}

void check_vnni(const at::Tensor& packed, int64_t in_features, int64_t out_features) {
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.scalar_type() == at::kBFloat16 &&
              packed.size(2) == LN_NB && packed.size(3) == 2,
              "packed must be a contiguous bf16 [N_pad / 64, K / 2, 64, 2] weight (pack_vnni)");
  const int64_t nb = packed.size(0);
  TORCH_CHECK(packed.size(1) * 2 == in_features, "x has ", in_features,
              " features, the packed weight ", packed.size(1) * 2);
  TORCH_CHECK(out_features > 0 && out_features <= nb * LN_NB && out_features > (nb - 1) * LN_NB,
              "out_features ", out_features, " does not match the packed weight's ", nb,
              " blocks of ", LN_NB);
  TORCH_CHECK(linear_supported(in_features),
              "linear_vnni needs an even in_features and a CPU with AVX512-BF16 or AMX "
              "(linear_supported)");
}

at::Tensor linear_vnni(const at::Tensor& x, const at::Tensor& packed, int64_t out_features,
                       const c10::optional<at::Tensor>& bias) {
  check_rows(x);
  check_vnni(packed, x.size(1), out_features);
  check_bias(bias, out_features, "linear_vnni");
  return linear_vnni_unchecked(x, packed, out_features, bias);
}

// silu(x Wg^T + bg) * (x Wu^T + bu) -> [M, inter] for a VNNI-packed gate_up weight of
// 2 * inter outputs (linear_silu_supported): linear_vnni then silu_and_mul, fused.
at::Tensor linear_vnni_silu(const at::Tensor& x, const at::Tensor& packed, int64_t inter,
                            const c10::optional<at::Tensor>& bias) {
  check_rows(x);
  TORCH_CHECK(linear_silu_supported(x.size(1), inter), "linear_vnni_silu needs inter (", inter,
              ") a multiple of ", LN_NB, " and a CPU with AVX512-BF16 or AMX "
              "(linear_silu_supported)");
  check_vnni(packed, x.size(1), 2 * inter);
  check_bias(bias, 2 * inter, "linear_vnni_silu");
  at::Tensor y = at::empty({x.size(0), inter}, x.options());
  linear_vnni_silu_impl(x, packed, inter, bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr,
                        y);
  return y;
}

// ---------------------------------------------------------------------------------------
// INT8 W8A8 GEMM with the CPU's integer dot products (AVX512-VNNI), the int8 quantization
// method's CPU numerics (layers/quantization/int8.py; reference int8_grouped_linear_ref):
// per-channel int8 weights W_q with scales s_w; activations quantized per row in groups of
// L consecutive inputs (the caller's act_group: a multiple of I8_GROUP dividing K), each
// group with its own scale: L = I8_GROUP for membound's own int8 (as llama.cpp's 8-bit
// activation blocks; per-token scales alone cost SmolLM2-135M 5x the KL divergence of
// weight-only int8, groups of 64 1.6x, perplexity level: docs/quantization.md), L = K (one
// scale per token) for a checkpoint that declares per-token scales and for a static scale:
//
//   x_q[m, k] = clamp(round_half_even(x[m, k] / s[m, g]), -127, 127),  g = k / L,
//   s[m, g] = max(amax_{k in g} |x[m, k]| / 127, 1e-12), or the static input scale,
//   y[m, n] = bf16(s_w[n] * sum_g s[m, g] * sum_{k in g} x_q[m, k] W_q[n, k] (+ bias[n])),
//
// each group's sum exact in int32, the sum over groups in float32, rounded to bf16 once.
// The instruction multiplies unsigned by signed bytes (four per 32-bit lane, summed into an
// int32): the weight enters as W_q + 128 (pack_int8_vnni stores it so), and each group's
// accumulator starts at -128 * sum_{k in g} x_q[m, k] (computed with the quantization),
// which takes the offset back out. Weight layout [N_pad / 64, K / 4, 64, 4] uint8: blocks of
// 64 output columns, four consecutive inputs of a column in one 32-bit lane, zero-padded
// columns. One instruction does 64 multiply-adds where the bf16 one does 32, at the same rate
// on AMD Zen 4 (one 512-bit instruction a cycle each): up to twice the bf16 GEMM's
// arithmetic at the compute-bound sizes (prefill), half its weight bytes at the
// memory-bound ones (decode).
constexpr int64_t I8_K = 4;       // input features per 32-bit lane
constexpr int64_t I8_GROUP = 64;  // inputs per activation scale of membound's own int8
// How a GEMM call quantizes its activations: the static scale (> 0) or 0 (each group's
// own), and the inputs per group (a multiple of I8_GROUP dividing K; K: one per token).
struct Int8Act {
  double static_scale;
  int64_t group;
};
// The quantized rows of one GEMM call (Int8Rows below) as the tiles read them.
struct Int8Operand {
  const int8_t* q;      // [M, K]
  const float* scale;   // [M, K / group]
  const int32_t* corr;  // [M, K / group]: -128 * the group's sum of q
  int64_t K, group;
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
constexpr bool kAvxInt8 = true;

// c [R, 16 NV] (float32, row stride ldc) = the group-scaled product of R quantized rows
// (a: int8 [R, K], row stride lda; sx / corr: [R, G] scales and offset corrections, row
// stride ldg; groups of `quads` k-quads) and 16 NV columns of a packed block (b: rows of
// 4 * PACK_N bytes per k-quad). R x NV int32 accumulators take a group's sums, R x NV
// float32 ones the scaled groups (at most 12 + 12 of the 32 registers). Each group ends in
// a conversion and an FMA per accumulator: an eighth of the arithmetic of groups of 64
// inputs, none to speak of with one group per row.
template <int R, int NV>
inline void avx_int8_tile(int64_t G, int64_t quads, const int8_t* a, int64_t lda, const float* sx,
                          const int32_t* corr, int64_t ldg, const uint8_t* b, float* c,
                          int64_t ldc) {
  __m512 acc[R][NV];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i sum[R][NV];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512i start = _mm512_set1_epi32(corr[r * ldg + g]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) sum[r][v] = start;
    }
    const int8_t* ag = a + g * quads * I8_K;
    const uint8_t* bg = b + g * quads * I8_K * PACK_N;
#pragma GCC unroll 2
    for (int64_t p = 0; p < quads; ++p) {
      const uint8_t* bp = bg + p * I8_K * PACK_N;
      __m512i bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + v * 64);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, ag + r * lda + p * I8_K, sizeof(quad));
        const __m512i av = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) sum[r][v] = _mm512_dpbusd_epi32(sum[r][v], bv[v], av);
      }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(sx[r * ldg + g]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[r][v]), s, acc[r][v]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + v * 16, acc[r][v]);
}

// c [m, nc] (float32, row stride ldc) = rows [m0, m0 + m) of A times columns [c0, c0 + nc)
// of one packed block ([K / 4][64][4]; c0 a multiple of 32, nc 32 or 64).
inline void avx_int8_block(const Int8Operand& A, int64_t m0, int64_t m, const uint8_t* blk,
                           int64_t c0, int64_t nc, float* c, int64_t ldc) {
  const int64_t K = A.K, G = K / A.group;
  const uint8_t* b = blk + I8_K * c0;
  auto tile = [&](auto R, auto NV, int64_t r) {
    const int64_t row = m0 + r;
    avx_int8_tile<decltype(R)::value, decltype(NV)::value>(
        G, A.group / I8_K, A.q + row * K, K, A.scale + row * G, A.corr + row * G, G, b,
        c + r * ldc, ldc);
  };
  if (nc == PACK_N)
    for_row_tiles<3>(m, 0, [&](auto R, int64_t r) { tile(R, std::integral_constant<int, 4>{}, r); });
  else
    for_row_tiles<6>(m, 0, [&](auto R, int64_t r) { tile(R, std::integral_constant<int, 2>{}, r); });
}

// 16 values quantized against the scale sv: float32 division and round-half-even, as torch;
// clamped before the conversion (equal to after it, and a quotient past the int32 range, a
// static scale's outlier, saturates instead of wrapping). Stored as int8 at q; returned as
// int32 for the group's sum.
inline __m512i quantize16_i8(__m512 v, __m512 sv, int8_t* q) {
  const __m512i qi = _mm512_cvtps_epi32(_mm512_min_ps(
      _mm512_max_ps(_mm512_div_ps(v, sv), _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(qi));
  return qi;
}

// One row as the tiles read it: per group of L inputs, q = clamp(rne(x / s), -127, 127) with
// s the static scale (> 0) or the group's own (amax / 127, at least 1e-12), and
// corr = -128 * sum(q). Groups of I8_GROUP are held in registers; longer ones read twice.
inline void quantize_row_i8(const at::BFloat16* x, int64_t K, const Int8Act& act, int8_t* q,
                            float* scale, int32_t* corr) {
  const int64_t L = act.group;
  const float static_scale = static_cast<float>(act.static_scale);
  auto scale_of = [&](__m512 amax) {
    return static_scale > 0.f ? static_scale : std::max(_mm512_reduce_max_ps(amax) / 127.f, 1e-12f);
  };
  for (int64_t g = 0; g < K / L; ++g) {
    const at::BFloat16* xg = x + g * L;
    int8_t* qg = q + g * L;
    __m512i total = _mm512_setzero_si512();
    float s;
    if (L == I8_GROUP) {
      __m512 v[I8_GROUP / 16];
      __m512 mx = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int i = 0; i < I8_GROUP / 16; ++i) {
        v[i] = load16(xg + 16 * i);
        mx = _mm512_max_ps(mx, _mm512_abs_ps(v[i]));
      }
      s = scale_of(mx);
      const __m512 sv = _mm512_set1_ps(s);
#pragma GCC unroll 4
      for (int i = 0; i < I8_GROUP / 16; ++i)
        total = _mm512_add_epi32(total, quantize16_i8(v[i], sv, qg + 16 * i));
    } else {
      __m512 mx = _mm512_setzero_ps();
      if (static_scale <= 0.f)
        for (int64_t i = 0; i < L; i += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(load16(xg + i)));
      s = scale_of(mx);
      const __m512 sv = _mm512_set1_ps(s);
      for (int64_t i = 0; i < L; i += 16)
        total = _mm512_add_epi32(total, quantize16_i8(load16(xg + i), sv, qg + i));
    }
    scale[g] = s;
    corr[g] = -128 * _mm512_reduce_add_epi32(total);
  }
}
#else
constexpr bool kAvxInt8 = false;
inline void avx_int8_block(const Int8Operand&, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                           float*, int64_t) {}
inline void quantize_row_i8(const at::BFloat16*, int64_t, const Int8Act&, int8_t*, float*,
                            int32_t*) {}
#endif

bool int8_linear_supported(int64_t in_features) {
  return kAvxInt8 && in_features > 0 && in_features % I8_GROUP == 0;
}

// A packed int8 weight and what its epilogue needs (checked by check_int8).
struct Int8Weight {
  const uint8_t* w;          // [nb, K / 4, 64, 4]: W_q + 128
  const float* scale;        // [N]: s_w
  const at::BFloat16* bias;  // [N] or nullptr
  int64_t nb;
};

// Scratch that every element of is written before it is read (no zero-filling: a prefill's
// GEMM call quantizes megabytes of activations).
template <typename T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

// The activations of one GEMM call quantized (quantize_row_i8), rows in parallel.
struct Int8Rows {
  std::unique_ptr<int8_t[]> q;
  std::unique_ptr<float[]> scale;
  std::unique_ptr<int32_t[]> corr;
  int64_t group;
  Int8Rows(const at::Tensor& x, const Int8Act& act)
      : q(scratch<int8_t>(x.numel())), scale(scratch<float>(x.numel() / act.group)),
        corr(scratch<int32_t>(x.numel() / act.group)), group(act.group) {
    const int64_t M = x.size(0), K = x.size(1), G = K / act.group;
    const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        quantize_row_i8(xp + r * K, K, act, q.get() + r * K,
                        scale.get() + r * G, corr.get() + r * G);
    });
  }
  Int8Operand operand(int64_t K) const { return {q.get(), scale.get(), corr.get(), K, group}; }
};

// out[j] = c[j] * s_w[c0 + j] (+ bias[c0 + j]) for nc columns from c0.
inline void int8_epilogue(const float* c, const Int8Weight& W, int64_t c0, int64_t nc, float* out) {
  if (W.bias == nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j) out[j] = c[j] * W.scale[c0 + j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < nc; ++j)
      out[j] = c[j] * W.scale[c0 + j] + static_cast<float>(W.bias[c0 + j]);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// int8_epilogue on 16 columns from col, in registers (a product, then the bias: no FMA, as
// the scalar form may compile either way and the two must agree where both run).
inline __m512 int8_scaled16(const float* c, const Int8Weight& W, int64_t col) {
  const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(c), _mm512_loadu_ps(W.scale + col));
  return W.bias == nullptr ? v : _mm512_add_ps(v, load16(W.bias + col));
}
#endif

// int8_epilogue's values rounded to bf16 into out (tmp: nc floats of scratch); one pass in
// registers where the columns are whole vectors.
inline void int8_store_row(const float* c, const Int8Weight& W, int64_t c0, int64_t nc,
                           float* tmp, at::BFloat16* out) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  if (nc % 16 == 0) {
    for (int64_t j = 0; j < nc; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j),
                          (__m256i)_mm512_cvtneps_pbh(int8_scaled16(c + j, W, c0 + j)));
    return;
  }
#endif
  int8_epilogue(c, W, c0, nc, tmp);
  store_f(tmp, out, nc);
}

// Row tiles of a W8A8 GEMM's M rows over nb column blocks: at most LN_MT rows each, alike in
// size; where one tile and an odd number of blocks would leave two threads uneven, two tiles
// (from I8_SPLIT_ROWS rows, enough to keep the register tiles full) or, for fewer rows
// (memory-bound), halves of 32 columns (halves true) where the caller's tasks may be halved.
constexpr int64_t I8_SPLIT_ROWS = 24;
struct Int8Tasks {
  int64_t mt, mr;
  bool halves;
  Int8Tasks(int64_t M, int64_t nb, bool may_halve)
      : mt((M + LN_MT - 1) / LN_MT), halves(false) {
    if (mt == 1 && nb % 2 == 1 && at::get_num_threads() > 1) {
      if (M >= I8_SPLIT_ROWS)
        mt = 2;
      else
        halves = may_halve;
    }
    mr = (M + mt - 1) / mt;
  }
};

// y [M, N] bf16 = the W8A8 product (inputs checked by the caller): tasks of (row tile,
// block of 64 columns, or a half of one: Int8Tasks).
void linear_int8_impl(const at::Tensor& x, const Int8Weight& W, int64_t N, const Int8Act& act,
                      at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1);
  if (M == 0) return;
  const Int8Rows rows(x, act);
  const Int8Operand A = rows.operand(K);
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const Int8Tasks tasks(M, W.nb, true);
  const int64_t mt = tasks.mt, mr = tasks.mr;
  const int64_t nc = tasks.halves ? LN_NB / 2 : LN_NB, units = (N + nc - 1) / nc;
  at::parallel_for(0, units * mt, 1, [&](int64_t t0, int64_t t1) {
    const auto c = scratch<float>(std::min(M, mr) * nc), row = scratch<float>(nc);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = (t % units) * nc, m0 = (t / units) * mr, m = std::min(mr, M - m0);
      const int64_t b = c0 / LN_NB, half = c0 % LN_NB;
      avx_int8_block(A, m0, m, W.w + b * K * LN_NB, half, nc, c.get(), nc);
      const int64_t nn = std::min(nc, N - c0);
      for (int64_t i = 0; i < m; ++i)
        int8_store_row(c.get() + i * nc, W, c0, nn, row.get(), yp + (m0 + i) * N + c0);
    }
  });
}

// y [M, inter] = silu(gate) * up of a gate_up weight packed as linear_int8's (gate columns,
// then up; inter a multiple of 64): each product rounded to bf16 as linear_int8 stores it,
// then silu_and_mul's arithmetic (the unfused pair's result bit for bit).
void linear_int8_silu_impl(const at::Tensor& x, const Int8Weight& W, int64_t inter,
                           const Int8Act& act, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), nbg = inter / LN_NB;
  if (M == 0) return;
  const Int8Rows rows(x, act);
  const Int8Operand A = rows.operand(K);
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const Int8Tasks tasks(M, nbg, false);  // a task is a gate block and its up block: no halves
  const int64_t mt = tasks.mt, mr = tasks.mr;
  at::parallel_for(0, nbg * mt, 1, [&](int64_t t0, int64_t t1) {
    const int64_t rm = std::min(M, mr);
    const auto cg = scratch<float>(rm * LN_NB), cu = scratch<float>(rm * LN_NB);
    [[maybe_unused]] alignas(64) float g[LN_NB], u[LN_NB];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nbg, m0 = (t / nbg) * mr, m = std::min(mr, M - m0);
      avx_int8_block(A, m0, m, W.w + b * K * LN_NB, 0, LN_NB, cg.get(), LN_NB);
      avx_int8_block(A, m0, m, W.w + (b + nbg) * K * LN_NB, 0, LN_NB, cu.get(), LN_NB);
      const int64_t n0 = b * LN_NB;
      for (int64_t i = 0; i < m; ++i) {
        at::BFloat16* o = yp + (m0 + i) * inter + n0;
        const float *ci = cg.get() + i * LN_NB, *ui = cu.get() + i * LN_NB;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
        for (int64_t j = 0; j < LN_NB; j += 16)  // silu_and_mul_impl's bf16 path on the
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j),  // products rounded as
                              silu_mul16_bf16(round_bf16(int8_scaled16(ci + j, W, n0 + j)),
                                              round_bf16(int8_scaled16(ui + j, W, inter + n0 + j))));
#else
        int8_epilogue(ci, W, n0, LN_NB, g);  // the products as linear_int8 stores them
        int8_epilogue(ui, W, inter + n0, LN_NB, u);
        round_to<at::BFloat16>(g, LN_NB);
        round_to<at::BFloat16>(u, LN_NB);
        silu_mul_row(g, u, o, LN_NB);
#endif
      }
    }
  });
}

// y [M, N] newly allocated, inputs checked by the caller
at::Tensor linear_int8_unchecked(const at::Tensor& x, const Int8Weight& W, int64_t N,
                                 const Int8Act& act) {
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  linear_int8_impl(x, W, N, act, y);
  return y;
}

// The activations' quantization for a call of in_features inputs: a static input_scale goes
// with one group per row (every group would share it), else act_group as given.
Int8Act check_int8_act(int64_t in_features, double input_scale, int64_t act_group) {
  TORCH_CHECK(std::isfinite(input_scale) && input_scale >= 0,
              "input_scale must be 0 (dynamic scales) or a positive static scale, got ",
              input_scale);
  TORCH_CHECK(act_group > 0 && act_group % I8_GROUP == 0 && in_features % act_group == 0,
              "act_group (inputs per activation scale) must be a multiple of ", I8_GROUP,
              " dividing in_features (", in_features, "; in_features itself: one per token), got ",
              act_group);
  return Int8Act{input_scale, input_scale > 0 ? in_features : act_group};
}

Int8Weight check_int8(const at::Tensor& packed, const at::Tensor& scale,
                      const c10::optional<at::Tensor>& bias, int64_t in_features,
                      int64_t out_features) {
  TORCH_CHECK(int8_linear_supported(in_features), "linear_int8 needs in_features (", in_features,
              ") a multiple of ", I8_GROUP, " and a CPU with AVX512-VNNI (int8_linear_supported)");
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.scalar_type() == at::kByte &&
              packed.size(2) == LN_NB && packed.size(3) == I8_K,
              "packed must be a contiguous uint8 [N_pad / 64, K / 4, 64, 4] weight (pack_int8_vnni)");
  const int64_t nb = packed.size(0);
  TORCH_CHECK(packed.size(1) * I8_K == in_features, "x has ", in_features,
              " features, the packed weight ", packed.size(1) * I8_K);
  TORCH_CHECK(out_features > 0 && out_features <= nb * LN_NB && out_features > (nb - 1) * LN_NB,
              "out_features ", out_features, " does not match the packed weight's ", nb,
              " blocks of ", LN_NB);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == out_features && scale.is_contiguous() &&
              scale.scalar_type() == at::kFloat, "weight scales must be a contiguous float32 [N]");
  check_bias(bias, out_features, "linear_int8");
  return Int8Weight{packed.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                    bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr, nb};
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                       int64_t out_features, double input_scale,
                       const c10::optional<at::Tensor>& bias, int64_t act_group) {
  check_rows(x);
  const Int8Weight W = check_int8(packed, scale, bias, x.size(1), out_features);
  return linear_int8_unchecked(x, W, out_features, check_int8_act(x.size(1), input_scale, act_group));
}

bool int8_silu_supported(int64_t in_features, int64_t inter) {
  return int8_linear_supported(in_features) && inter > 0 && inter % LN_NB == 0;
}

at::Tensor linear_int8_silu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            int64_t inter, double input_scale,
                            const c10::optional<at::Tensor>& bias, int64_t act_group) {
  check_rows(x);
  TORCH_CHECK(int8_silu_supported(x.size(1), inter), "linear_int8_silu needs inter (", inter,
              ") a multiple of ", LN_NB, " (int8_silu_supported)");
  const Int8Weight W = check_int8(packed, scale, bias, x.size(1), 2 * inter);
  const Int8Act act = check_int8_act(x.size(1), input_scale, act_group);
  at::Tensor y = at::empty({x.size(0), inter}, x.options());
  linear_int8_silu_impl(x, W, inter, act, y);
  return y;
}

// ---------------------------------------------------------------------------------------
// Each row's argmax: the index of its first maximum, or of its first NaN where it has one
// (what torch's max(dim=-1).indices returns). Greedy sampling reads a step's logits
// ([rows, vocab], bf16 or float32, rows strided) once; torch's bf16 reduction took ~2 ms of a
// 64-sequence SmolLM2 decode step.
template <typename T>
int64_t argmax_row(const T* x, int64_t n) {
  int64_t i = 0;
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = 0;
#if defined(__AVX512F__)
  if (n >= 16) {
    __m512 vbest = load16<T>(x);
    __m512i vat = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i cur = vat;
    const __m512i step = _mm512_set1_epi32(16);
    __mmask16 nan = _mm512_cmp_ps_mask(vbest, vbest, _CMP_UNORD_Q);
    int64_t read = 0;  // where the last vector read starts
    for (i = 16; i + 16 <= n && nan == 0; i += 16) {
      read = i;
      cur = _mm512_add_epi32(cur, step);
      const __m512 v = load16<T>(x + i);
      nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, vbest, _CMP_GT_OQ);  // strictly: the first stays
      vbest = _mm512_mask_mov_ps(vbest, gt, v);
      vat = _mm512_mask_mov_epi32(vat, gt, cur);
    }
    if (nan != 0) return read + __builtin_ctz(nan);  // the first NaN: the last vector's lowest
    alignas(64) float bv[16];
    alignas(64) int32_t ba[16];
    _mm512_store_ps(bv, vbest);
    _mm512_store_si512(ba, vat);
    best = bv[0], at = ba[0];
    for (int l = 1; l < 16; ++l)  // the largest; among equals, the first index
      if (bv[l] > best || (bv[l] == best && ba[l] < at)) best = bv[l], at = ba[l];
  }
#endif
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    if (std::isnan(v)) return i;
    if (v > best || i == 0) best = v, at = i;
  }
  return at;
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(1) > 0 &&
              (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              "x must be [rows, n > 0] bfloat16 or float32 with contiguous rows");
  const int64_t rows = x.size(0), n = x.size(1), rs = x.stride(0);
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  auto run = [&](const auto* p) {
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) o[r] = argmax_row(p + r * rs, n);
    });
  };
  if (x.scalar_type() == at::kBFloat16)
    run(x.data_ptr<at::BFloat16>());
  else
    run(x.data_ptr<float>());
  return out;
}

// ---------------------------------------------------------------------------------------
// A decode step through a stack of pre-norm decoder layers (Llama's: RMSNorm, QKV, rotary,
// the paged cache, attention, O, RMSNorm with the residual, gate/up, SiLU-and-mul, down) in
// one call: the kernels the model's modules call, in their order, on the same tensors, so
// the result is the module path's bit for bit; what it saves is the Python and dispatch
// between them (a third of a batch-1 step on a small model). bf16; built once after loading
// (kernels/cpu_decode_stack.py), run per step.
//
// A linear is one of the CPU backend's layouts, multiplied as its layer does:
//   kind 0  bf16 VNNI-packed (linear_vnni)
//   kind 1  int4: torch's packed CPU kernel, weight [N, K/2] uint8, scales_zeros [K/G, N, 2]
//   kind 2  int8 weight-only: torch's packed CPU kernel, weight [N, K] int8, scales [N] bf16
//   kind 3  int8 W8A8 (linear_int8): weight pack_int8_vnni's, scales [N] float32,
//           input_scale 0 (dynamic activation scales, groups of G inputs) or static
// (the quantized kernels only up to the rows where the layers use them: the caller checks).
struct StackLinear {
  int64_t kind, in_features, out_features, group_size;
  at::Tensor weight;
  c10::optional<at::Tensor> bias, scales;
  double input_scale;

  Int8Weight int8() const {
    return Int8Weight{weight.data_ptr<uint8_t>(), scales->data_ptr<float>(),
                      bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr, weight.size(0)};
  }
  Int8Act int8_act() const { return Int8Act{input_scale, group_size}; }

  at::Tensor operator()(const at::Tensor& x) const {
    if (kind == 0) return linear_vnni_unchecked(x, weight, out_features, bias);
    if (kind == 3) return linear_int8_unchecked(x, int8(), out_features, int8_act());
    at::Tensor y = kind == 1 ? at::_weight_int4pack_mm_for_cpu(x, weight, group_size, *scales)
                             : at::_weight_int8pack_mm(x, weight, *scales);
    return bias.has_value() ? y.add_(*bias) : y;
  }
};

// kind, w, b, s, N, G (int4: the weight's group; int8 W8A8: the activations'), input_scale
using LinearSpec = std::tuple<int64_t, at::Tensor, c10::optional<at::Tensor>,
                              c10::optional<at::Tensor>, int64_t, int64_t, double>;

StackLinear make_linear(const LinearSpec& spec, int64_t in_features, int64_t out_features,
                        const char* what) {
  const auto& [kind, w, bias, scales, n, group, input_scale] = spec;
  TORCH_CHECK(n == out_features, what, ": ", n, " outputs where the stack needs ", out_features);
  check_bias(bias, n, what);
  int64_t group_size = group;  // int8 W8A8: as the calls take it (static: one group per row)
  if (kind == 3) {
    TORCH_CHECK(scales.has_value(), what, ": int8 W8A8 needs the weight scales");
    check_int8(w, *scales, bias, in_features, n);
    group_size = check_int8_act(in_features, input_scale, group).group;
  } else if (kind == 0) {
    check_vnni(w, in_features, n);
  } else if (kind == 1) {
    TORCH_CHECK(w.dim() == 2 && w.size(0) == n && w.size(1) * 2 == in_features &&
                w.scalar_type() == at::kByte && group > 0 && in_features % group == 0 &&
                scales.has_value() && scales->scalar_type() == at::kBFloat16 &&
                scales->dim() == 3 && scales->size(0) == in_features / group &&
                scales->size(1) == n, what, ": int4 needs weight [N, K/2] uint8 and scales_zeros "
                "[K/G, N, 2] bf16");
  } else if (kind == 2) {
    TORCH_CHECK(w.dim() == 2 && w.size(0) == n && w.size(1) == in_features &&
                w.scalar_type() == at::kChar && scales.has_value() &&
                scales->scalar_type() == at::kBFloat16 && scales->dim() == 1 &&
                scales->size(0) == n, what, ": int8 needs weight [N, K] int8 and scales [N] bf16");
  } else {
    TORCH_CHECK(false, what, ": unknown linear kind ", kind);
  }
  return StackLinear{kind, in_features, n, group_size, w, bias, scales, input_scale};
}

struct StackLayer {
  at::Tensor in_norm, post_norm;
  StackLinear qkv, o, gate_up, down;
  double k_scale, v_scale;  // an FP8 cache's (kv_quant.py); a bf16 cache ignores them
};

struct DecodeStack {
  std::vector<StackLayer> layers;
  int64_t H, KVH, D, hidden, inter;
  double eps, scale;

  // per layer: (input norm, post norm, [qkv, o, gate_up, down], k_scale, v_scale) with each
  // linear a LinearSpec
  DecodeStack(const std::vector<std::tuple<at::Tensor, at::Tensor, std::vector<LinearSpec>, double, double>>& spec,
              int64_t H_, int64_t KVH_, int64_t D_, int64_t hidden_, int64_t inter_, double eps_,
              double scale_)
      : H(H_), KVH(KVH_), D(D_), hidden(hidden_), inter(inter_), eps(eps_), scale(scale_) {
    TORCH_CHECK(!spec.empty(), "a stack needs layers");
    TORCH_CHECK(H % KVH == 0 && D % 2 == 0, "heads a multiple of KV heads, an even head_dim");
    for (size_t l = 0; l < spec.size(); ++l) {
      const auto& [in_norm, post_norm, lins, k_scale, v_scale] = spec[l];
      TORCH_CHECK(k_scale > 0 && v_scale > 0, "layer ", l, ": KV-cache scales must be positive");
      for (const at::Tensor* w : {&in_norm, &post_norm})
        TORCH_CHECK(w->dim() == 1 && w->size(0) == hidden && w->is_contiguous() &&
                    w->scalar_type() == at::kBFloat16, "layer ", l, ": norm weights bf16 [hidden]");
      TORCH_CHECK(lins.size() == 4, "layer ", l, ": qkv, o, gate_up and down");
      layers.push_back(StackLayer{in_norm, post_norm,
                                  make_linear(lins[0], hidden, (H + 2 * KVH) * D, "qkv"),
                                  make_linear(lins[1], H * D, hidden, "o"),
                                  make_linear(lins[2], hidden, 2 * inter, "gate_up"),
                                  make_linear(lins[3], inter, hidden, "down"), k_scale, v_scale});
    }
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }

  // hidden [T, hidden] bf16 (the embeddings); cos/sin [T, D/2] float32; one cache per layer;
  // slot_mapping [T] int64; block_tables [T, max_blocks] / seq_lens [T] (both int32 or
  // int64). Returns (hidden, residual) after the last layer (the final norm is the caller's).
  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_in, const at::Tensor& cos,
                                             const at::Tensor& sin,
                                             const std::vector<at::Tensor>& kv_caches,
                                             const at::Tensor& slot_mapping,
                                             const at::Tensor& block_tables,
                                             const at::Tensor& seq_lens, int64_t window) const {
    using bf16 = at::BFloat16;
    const int64_t T_ = hidden_in.size(0);
    TORCH_CHECK(hidden_in.dim() == 2 && hidden_in.size(1) == hidden && hidden_in.is_contiguous() &&
                hidden_in.scalar_type() == at::kBFloat16, "hidden must be contiguous bf16 [T, hidden]");
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == T_ &&
                sin.sizes() == cos.sizes() && cos.size(1) * 2 == D,
                "cos/sin must be contiguous float32 [T, D/2]");
    TORCH_CHECK(static_cast<int64_t>(kv_caches.size()) == num_layers(), "a KV cache per layer");
    const bool fp8_cache = kv_caches[0].scalar_type() == at::kFloat8_e4m3fn;
    for (const at::Tensor& c : kv_caches)
      TORCH_CHECK(c.dim() == 5 && c.is_contiguous() && c.scalar_type() == kv_caches[0].scalar_type() &&
                  (fp8_cache || c.scalar_type() == at::kBFloat16) && c.size(3) == KVH && c.size(4) == D,
                  "KV caches must be contiguous [2, N, B, KVH, D], all bf16 or all FP8");
    TORCH_CHECK(slot_mapping.is_contiguous() && slot_mapping.scalar_type() == at::kLong &&
                slot_mapping.size(0) == T_, "slot_mapping must be contiguous int64 [T]");
    TORCH_CHECK(block_tables.is_contiguous() && seq_lens.is_contiguous() &&
                block_tables.scalar_type() == seq_lens.scalar_type() &&
                (seq_lens.scalar_type() == at::kLong || seq_lens.scalar_type() == at::kInt) &&
                block_tables.size(0) >= T_ && seq_lens.size(0) >= T_,
                "block_tables/seq_lens: contiguous, both int32 or both int64, a row per token");
    const int64_t num_slots = kv_caches[0].size(1) * kv_caches[0].size(2);
    const int64_t* slots = slot_mapping.data_ptr<int64_t>();
    for (int64_t t = 0; t < T_; ++t)
      TORCH_CHECK(slots[t] < num_slots, "slot ", slots[t], " is past the cache's ", num_slots, " slots");

    at::Tensor residual = hidden_in, h = at::empty_like(hidden_in);
    rms_norm_impl<bf16>(hidden_in, c10::nullopt, layers[0].in_norm, eps, h, nullptr);
    for (size_t l = 0; l < layers.size(); ++l) {
      const StackLayer& L = layers[l];
      if (l > 0) {
        at::Tensor normed = at::empty_like(h), summed = at::empty_like(h);
        rms_norm_impl<bf16>(h, residual, L.in_norm, eps, normed, summed.data_ptr<bf16>());
        h = normed;
        residual = summed;
      }
      at::Tensor qkv_out = L.qkv(h);
      at::Tensor q = qkv_out.narrow(1, 0, H * D).view({T_, H, D});
      at::Tensor k = qkv_out.narrow(1, H * D, KVH * D).view({T_, KVH, D});
      at::Tensor v = qkv_out.narrow(1, (H + KVH) * D, KVH * D).view({T_, KVH, D});
      rotary_impl<bf16>(q, k, cos, sin);
      const double ks = fp8_cache ? L.k_scale : 1.0, vs = fp8_cache ? L.v_scale : 1.0;
      store_kv(k, v, kv_caches[l], slot_mapping, ks, vs);
      at::Tensor attn = at::empty({T_, H, D}, h.options());
      const bool i64 = seq_lens.scalar_type() == at::kLong;
      if (fp8_cache && i64)
        decode_attention_impl<bf16, fp8, int64_t>(q, kv_caches[l], block_tables, seq_lens, scale,
                                                  window, attn, ks, vs);
      else if (fp8_cache)
        decode_attention_impl<bf16, fp8, int32_t>(q, kv_caches[l], block_tables, seq_lens, scale,
                                                  window, attn, ks, vs);
      else if (i64)
        decode_attention_impl<bf16, bf16, int64_t>(q, kv_caches[l], block_tables, seq_lens, scale,
                                                   window, attn);
      else
        decode_attention_impl<bf16, bf16, int32_t>(q, kv_caches[l], block_tables, seq_lens, scale,
                                                   window, attn);
      at::Tensor o_out = L.o(attn.view({T_, H * D}));
      at::Tensor normed = at::empty_like(o_out), summed = at::empty_like(o_out);
      rms_norm_impl<bf16>(o_out, residual, L.post_norm, eps, normed, summed.data_ptr<bf16>());
      residual = summed;
      at::Tensor act;
      if (L.gate_up.kind == 0 && linear_silu_supported(hidden, inter)) {  // as the module does
        act = at::empty({T_, inter}, normed.options());
        linear_vnni_silu_impl(normed, L.gate_up.weight, inter,
                              L.gate_up.bias.has_value() ? L.gate_up.bias->data_ptr<bf16>() : nullptr,
                              act);
      } else if (L.gate_up.kind == 3 && int8_silu_supported(hidden, inter)) {
        act = at::empty({T_, inter}, normed.options());
        linear_int8_silu_impl(normed, L.gate_up.int8(), inter, L.gate_up.int8_act(), act);
      } else {
        at::Tensor gu = L.gate_up(normed);
        act = at::empty({T_, inter}, gu.options());
        silu_and_mul_impl<bf16>(gu, act);
      }
      h = L.down(act);
    }
    return {h, residual};
  }
};
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The long calls let go of the GIL while they run (after their arguments are converted),
  // as torch's own ops do: a server's event loop thread keeps serving during a model step.
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("decode_attention", &decode_attention, "paged decode attention (in place reads)",
        pybind11::arg("query"), pybind11::arg("kv_cache"), pybind11::arg("block_tables"),
        pybind11::arg("seq_lens"), pybind11::arg("scale"), pybind11::arg("sliding_window"),
        pybind11::arg("out"), pybind11::arg("k_scale") = 1.0, pybind11::arg("v_scale") = 1.0, nogil);
  m.def("rms_norm", &rms_norm, "RMSNorm, optionally fused with the residual add (returns out, x + residual)");
  m.def("silu_and_mul", &silu_and_mul, "SiLU(gate) * up");
  m.def("rotary_embedding", &rotary_embedding, "rotate-half rotary, in place on q and k");
  m.def("prefill_attention", &prefill_attention, "paged prefill/extend attention, bf16 (brgemm)",
        pybind11::arg("query"), pybind11::arg("kv_cache"), pybind11::arg("block_tables"),
        pybind11::arg("query_start_loc"), pybind11::arg("seq_lens"), pybind11::arg("scale"),
        pybind11::arg("sliding_window"), pybind11::arg("out"), pybind11::arg("k_scale") = 1.0,
        pybind11::arg("v_scale") = 1.0, nogil);
  m.def("prefill_supported", &prefill_supported, "whether prefill_attention serves this head_dim on this CPU");
  m.def("store_kv", &store_kv, "store K/V rows into the paged cache by slot (an FP8 cache: / scale, saturated)",
        pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("kv_cache"),
        pybind11::arg("slot_mapping"), pybind11::arg("k_scale") = 1.0, pybind11::arg("v_scale") = 1.0);
  m.def("linear_vnni", &linear_vnni, "bf16 x @ W^T (+ bias) on a VNNI-packed weight (brgemm)", nogil);
  m.def("bf16_gemm_path", &bf16_gemm_path,
        "what multiplies bf16 here: 'ukernel' (torch's, AMX), 'avx512_bf16' or 'none'");
  m.def("linear_supported", &linear_supported, "whether linear_vnni serves this in_features on this CPU");
  m.def("argmax_rows", &argmax_rows, "each row's first maximum (or first NaN), int64", nogil);
  m.def("linear_vnni_silu", &linear_vnni_silu,
        "silu(gate) * up of a VNNI-packed gate_up weight's product, fused (brgemm)", nogil);
  m.def("linear_silu_supported", &linear_silu_supported,
        "whether linear_vnni_silu serves this in_features and intermediate size on this CPU");
  m.def("linear_int8", &linear_int8,
        "int8 W8A8 product (+ bias) on a pack_int8_vnni weight, activations in groups of 64 (AVX512-VNNI)",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("scale"),
        pybind11::arg("out_features"), pybind11::arg("input_scale"), pybind11::arg("bias"),
        pybind11::arg("act_group"), nogil);
  m.def("linear_int8_silu", &linear_int8_silu,
        "silu(gate) * up of a packed int8 gate_up weight's W8A8 product, fused",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("scale"),
        pybind11::arg("inter"), pybind11::arg("input_scale"), pybind11::arg("bias"),
        pybind11::arg("act_group"), nogil);
  m.def("int8_linear_supported", &int8_linear_supported,
        "whether linear_int8 serves this in_features on this CPU (AVX512-VNNI)");
  m.def("int8_silu_supported", &int8_silu_supported,
        "whether linear_int8_silu serves this in_features and intermediate size on this CPU");
  pybind11::class_<DecodeStack>(m, "DecodeStack", "decode steps through a stack of decoder layers")
      .def(pybind11::init<const std::vector<std::tuple<at::Tensor, at::Tensor, std::vector<LinearSpec>, double, double>>&,
                          int64_t, int64_t, int64_t, int64_t, int64_t, double, double>())
      .def("forward", &DecodeStack::forward, nogil)
      .def_property_readonly("num_layers", &DecodeStack::num_layers);
}
