// Decode-time linear layers for x86 CPUs: y = x @ W.T (+ bias) for a few activation rows (one per
// sequence of a running batch). Built on first use by cpu_kernels.py; see its docstring for why these
// exist. Registered as torch ops (openseason::decode_linear, openseason::decode_linear_int8) so a
// compiled decode step calls them through the dispatcher with no Python in between.
//
// The shape of the work: each weight element is read once per call and used for every activation
// row while it is in a register, so batch 8 costs little more than batch 1 (the weight read), where
// BLAS's matrix-matrix path repacks the whole weight per call.
// - fp32 (decode_linear): column-major weights, 1-16 rows: run_col (vectors along the outputs, the
//   storage read in order by col_rows, one chain of sums per output at every row count).
// - int8 weight-only (decode_linear_int8): row-major int8 with one fp32 scale per output row, 1-16
//   rows: 16-row blocks read in memory order (int8_rows16), int8_tile after the last whole block;
//   int8-dynamic (decode_linear_int8_dynamic): the same with int8 x int8 dot products (VNNI, or AVX2's
//   vpmaddubsw).
// - bf16 (decode_linear_bf16): with AVX-512 BF16, row-major weights, 1-32 rows: bf16_rows16 (the
//   same walk with vdpbf16ps); without it, column-major weights like fp32's (run_col).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <pthread.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <sched.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>

static inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
// fp32 rounded to the nearest bf16 (ties to even), as torch's .to(torch.bfloat16) does, as fp32 bits;
// a NaN comes out quiet, so its top half is still a NaN. Branch-free, so loops over arrays vectorize
// (a step rounds every activation and every output of every layer).
static inline uint32_t bf16_rounded_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  return (bits & 0x7fffffffu) > 0x7f800000u ? bits | 0x00400000u : rounded;
}
static inline float round_to_bf16(float f) {
  const uint32_t bits = bf16_rounded_bits(f);
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define OS_LANES 16
typedef __m512 vec;
static inline vec vzero() { return _mm512_setzero_ps(); }
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vec vload_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
static inline vec vset1(float f) { return _mm512_set1_ps(f); }
static inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec vload_bf16(const uint16_t* p) {   // bf16 is the top half of an fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define OS_LANES 8
typedef __m256 vec;
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vec vload_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vsum(vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline vec vset1(float f) { return _mm256_set1_ps(f); }
static inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec vload_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
#else
#define OS_LANES 1
typedef float vec;
static inline vec vzero() { return 0.f; }
static inline vec vload(const float* p) { return *p; }
static inline vec vload_i8(const int8_t* p) { return static_cast<float>(*p); }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline float vsum(vec v) { return v; }
static inline vec vset1(float f) { return f; }
static inline void vstore(float* p, vec v) { *p = v; }
static inline vec vadd(vec a, vec b) { return a + b; }
static inline vec vload_bf16(const uint16_t* p) { return bf16_to_float(*p); }
#endif

static inline void prefetch(const void* p) {   // into L1; prefetches never fault
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
#else
  (void)p;
#endif
}

namespace {

// The kernels' own team of threads, for decode steps run off the main thread (set_step_threads; the
// server's engine thread). There at::parallel_for is slow: a step opens an OpenMP region per product
// (25-45 of them, a few microseconds to a millisecond each), and once the main thread has a team of
// its own, libgomp counts more threads than cores and stops spinning between regions, so every one
// of them sleeps and wakes through the kernel. On the 2-core AMD EPYC, two-thread decoding from a second
// thread ran 1.5-2.8x faster on this team than on OpenMP (speed.AheadOfTimeStep lists the figures).
// Its workers spin on an atomic for the next task (alone at first, then yielding the core now and
// then), and sleep on a condition variable after 2 ms without one. Torch's own operations in the step
// run on one thread meanwhile: two teams spinning for work on two cores took turns by the scheduler's
// time slices (a tenth of the speed). One caller at a time has the team; another caller meanwhile runs
// its whole task on its own thread. Which thread runs which part never changes a result: the caller
// fixes every task's parts (see the kernels), and a part is computed the same way wherever it runs.
class KernelTeam {
 public:
  // Runs f(begin, end) over [0, n) in at most `threads` contiguous ranges of at least `grain`
  // (the caller takes the first range), like at::parallel_for.
  template <typename F>
  void run(int64_t n, int64_t grain, int64_t threads, const F& f) {
    const int64_t ranges = std::min<int64_t>(threads, (n + grain - 1) / std::max<int64_t>(1, grain));
    if (ranges <= 1 || in_task() || !submit_.try_lock()) {
      if (n > 0) f(0, n);
      return;
    }
    std::lock_guard<std::mutex> held(submit_, std::adopt_lock);
    grow(ranges - 1);
    const int64_t chunk = (n + ranges - 1) / ranges;
    auto part = [&](int64_t r) {
      const int64_t begin = r * chunk, end = std::min(n, begin + chunk);
      if (begin < end) f(begin, end);
    };
    using Part = decltype(part);
    task_ = [](const void* fn, int64_t r) { (*static_cast<const Part*>(fn))(r); };
    task_fn_ = &part;
    ranges_ = ranges;
    // every worker answers every task (those past `ranges` with nothing done), so no worker can still be
    // reading this task's fields when the next one is written
    pending_.store(workers_started_, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    in_task() = true;
    part(0);
    in_task() = false;
    // a worker not yet running needs a core: after a while, give up this one now and then
    const auto yield_from = std::chrono::steady_clock::now() + SPIN_WITHOUT_YIELD;
    for (int i = 1; pending_.load(std::memory_order_acquire) > 0; i++) {
      spin_pause();
      if (i % CHECK_EVERY == 0 && std::chrono::steady_clock::now() > yield_from) sched_yield();
    }
  }

  static KernelTeam& get() {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { team_.store(nullptr); }); });
    KernelTeam* team = team_.load(std::memory_order_acquire);
    if (team == nullptr) {   // kept for the process's life: its workers are detached
      KernelTeam* made = new KernelTeam();
      if (team_.compare_exchange_strong(team, made)) team = made;
      else delete made;   // another thread's came first (this one has no workers yet)
    }
    return *team;
  }

 private:
  // A worker waits for the next task spinning alone for SPIN_WITHOUT_YIELD (the gaps between one
  // step's products), then yielding its core every CHECK_EVERY pauses until SPIN, then asleep.
  static constexpr auto SPIN_WITHOUT_YIELD = std::chrono::microseconds(100);
  static constexpr auto SPIN = std::chrono::microseconds(2000);
  static constexpr int CHECK_EVERY = 256;
  static inline std::atomic<KernelTeam*> team_{nullptr};   // reset in a forked child: no workers there

  static bool& in_task() {
    static thread_local bool inside = false;
    return inside;
  }
  static inline void spin_pause() {
#if defined(__x86_64__)
    _mm_pause();
#endif
  }

  void grow(int64_t workers) {
    while (workers_started_ < workers) {
      const int64_t index = ++workers_started_;   // worker w runs range w, from the next task on
      const uint64_t before = generation_.load(std::memory_order_relaxed);
      std::thread([this, index, before] { work(index, before); }).detach();
    }
  }

  void work(int64_t index, uint64_t seen) {   // seen: the generation before this worker's first task
    in_task() = true;
    for (;;) {
      seen = wait_for_next(seen);
      if (index < ranges_) task_(task_fn_, index);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  uint64_t wait_for_next(uint64_t seen) {
    const auto from = std::chrono::steady_clock::now();
    for (int i = 1;; i++) {
      const uint64_t now = generation_.load(std::memory_order_acquire);
      if (now != seen) return now;
      spin_pause();
      if (i % CHECK_EVERY == 0) {
        const auto waited = std::chrono::steady_clock::now() - from;
        if (waited > SPIN) break;
        if (waited > SPIN_WITHOUT_YIELD) sched_yield();
      }
    }
    std::unique_lock<std::mutex> lock(sleep_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return generation_.load(std::memory_order_acquire);
  }

  std::mutex submit_;                       // one caller at a time
  std::mutex sleep_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};     // one more per task
  std::atomic<int64_t> pending_{0};         // workers' ranges not finished
  std::atomic<int> sleepers_{0};
  void (*task_)(const void*, int64_t) = nullptr;
  const void* task_fn_ = nullptr;
  int64_t ranges_ = 0;
  int64_t workers_started_ = 0;
};

// > 1 while this thread runs a decode step with torch's own ops on one thread (set_step_threads): the
// team's size for the kernels. Otherwise they run on torch's threads (at::parallel_for): two teams
// spinning for work on the same cores took turns by the scheduler's time slices, and two-thread
// eager decoding fell to a tenth of its speed.
static thread_local int64_t step_threads = 0;

// How many threads the kernels split a product for: the step's team, else torch's threads.
static inline int64_t kernel_threads() {
  return step_threads > 1 ? step_threads : std::max<int64_t>(1, at::get_num_threads());
}

template <typename F>
static inline void kernel_parallel_for(int64_t n, int64_t grain, const F& f) {
  if (step_threads > 1) KernelTeam::get().run(n, grain, step_threads, f);
  else at::parallel_for(0, n, grain, f);
}

static inline void set_torch_threads(int64_t threads) {
#if defined(_OPENMP)
  omp_set_num_threads(static_cast<int>(threads));   // what at::get_num_threads reads
#else
  at::set_num_threads(static_cast<int>(threads));
#endif
}

// Inside a step, a product the kernels do not cover runs on torch's threads at the step's size.
struct TorchThreadsForFallback {
  TorchThreadsForFallback() { if (step_threads > 1) set_torch_threads(step_threads); }
  ~TorchThreadsForFallback() { if (step_threads > 1) set_torch_threads(1); }
};

constexpr int ROWS = 4;       // weight rows per tile
constexpr int BT = 4;         // activation rows per tile
constexpr int64_t MAX_BATCH = 16;   // more rows than this go to BLAS (prefill)
// fp32: up to 16 rows (a full default serving batch sums alike at every size). llama-6x512's matrices
// (decode_products.py, Intel Xeon) against torch's product on the same column-major storage (the path
// past this bound): 12-16 rows 1.07-1.13x on one and two threads; 24-32 rows 0.75-0.99x.
constexpr int64_t MAX_FP32_ROWS = 16;
// bf16, both layouts: up to 32 rows (short prompts' prefill too). Row-major against torch's bf16 product
// (oneDNN on the AMD EPYC): 1.8-1.9x at 16 rows, 1.2-1.4x at 32, 0.8-0.9x at 64. torch's product gives a
// row other bits in some batches than alone (a [32000, 512] weight: 9 or 27 rows alone against the same
// rows among 120), so a request decoded another text alone than when its prefill was batched.
constexpr int64_t MAX_BF16_ROWS = 32;
// Row-major kernels (int8-dynamic, bf16) prefetch about this many bytes ahead in the weight stream,
// rounded to whole blocks of weight rows so each prefetch lands on the same place of a later block: in
// elements, for blocks of `block` elements of `elem_bytes` each. On the AMD EPYC, batch-1 int8-dynamic
// decoding of llama-6x512 ran 4-8% faster with 4-8 KB than without, and further ahead was slower.
constexpr int64_t PREFETCH_BYTES = 8192;
static inline int64_t blocks_ahead(int64_t block, int64_t elem_bytes) {
  return block * std::max<int64_t>(1, (PREFETCH_BYTES + block * elem_bytes - 1) / (block * elem_bytes));
}

// Calls f(std::integral_constant<int, NB>{}, b0) over the activation rows [0, batch) in tiles of TILE
// rows and one last tile of 1..TILE-1, so each kernel's tile is a template on its row count.
template <int N, typename F>
static inline void call_rows(int64_t rows, int64_t b0, F& f) {   // 1 <= rows <= N
  if constexpr (N >= 1) {
    if (rows == N) f(std::integral_constant<int, N>{}, b0);
    else call_rows<N - 1>(rows, b0, f);
  }
}

template <int TILE, typename F>
static inline void over_row_tiles(int64_t batch, F&& f) {
  int64_t b0 = 0;
  for (; b0 + TILE <= batch; b0 += TILE) f(std::integral_constant<int, TILE>{}, b0);
  if (batch > b0) call_rows<TILE - 1>(batch - b0, b0, f);
}

// int8 weight-only: y[b, o] = scale[o] * sum_i x[b, i] * w[o, i] + bias[o] for o in [o0, o0 + ROWS)
// (rows past `out` read row o0 again and are not written), b in [b0, b0 + NB).
template <int NB>
static inline void int8_tile(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                             int64_t b0, int64_t o0, int64_t in, int64_t out) {
  const int8_t* wr[ROWS];
  for (int r = 0; r < ROWS; r++) wr[r] = w + (o0 + r < out ? o0 + r : o0) * in;
  const float* xb[NB];
  for (int b = 0; b < NB; b++) xb[b] = x + (b0 + b) * in;
  vec acc[ROWS][NB];
  for (int r = 0; r < ROWS; r++)
    for (int b = 0; b < NB; b++) acc[r][b] = vzero();
  int64_t i = 0;
  for (; i + OS_LANES <= in; i += OS_LANES) {
    vec wv[ROWS];
    for (int r = 0; r < ROWS; r++) wv[r] = vload_i8(wr[r] + i);
    for (int b = 0; b < NB; b++) {
      vec xv = vload(xb[b] + i);
      for (int r = 0; r < ROWS; r++) acc[r][b] = vfma(wv[r], xv, acc[r][b]);
    }
  }
  for (int r = 0; r < ROWS; r++) {
    if (o0 + r >= out) break;
    for (int b = 0; b < NB; b++) {
      float s = vsum(acc[r][b]);
      for (int64_t j = i; j < in; j++) s += static_cast<float>(wr[r][j]) * xb[b][j];
      s *= scale[o0 + r];
      if (bias) s += bias[o0 + r];
      y[(b0 + b) * out + o0 + r] = s;
    }
  }
}

#if defined(__AVX512F__)
// Sixteen fp32 vectors to one: lane r is the sum of a[r]'s lanes (unpack and add within 128-bit lanes,
// then across them: 45 instructions for 16 rows, where a reduction per row took about 10 each).
static inline __m512 sum_lanes16_ps(__m512* a) {
  __m512 b[8], c[4];
  for (int k = 0; k < 8; k++)
    b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
  for (int k = 0; k < 4; k++) {
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * k]), _mm512_castps_pd(b[2 * k + 1]));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * k]), _mm512_castps_pd(b[2 * k + 1]));
    c[k] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  const __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// NB (1..4) fp32 activation rows against 16 whole int8 weight rows [o0, o0 + 16) (int8 weight-only),
// read in memory order like dyn_rows16: each weight row whole before the next, widened 16 at a time and
// multiplied with every activation row; four chains of sums per row pair (one FMA's latency would
// otherwise set the pace at one row), the same four whatever NB is, so a row's result does not depend on
// the batch; the sums set aside and reduced 16 rows at a time. int8_tile walks 4 rows side by side:
// against it (llama-6x512's matrices from huge pages, AMD EPYC, decode_products.py --dtype int8) one
// row read 0.25 -> 0.91 of the probed bandwidth on one thread (4.24 -> 1.10 ms a pass), 0.40 -> 0.98
// on two; four rows 5.71 -> 2.46 ms and 2.85 -> 1.53 ms.
template <int NB>
static inline void int8_rows16(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                               int64_t b0, int64_t o0, int64_t in, int64_t out, int64_t ahead) {
  __m512 stash[NB][16];
  const float* xr = x + b0 * in;
  const int64_t whole = in / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>(whole < in ? (1u << (in - whole)) - 1 : 0);
  const int8_t* p = w + o0 * in;
  auto widen = [](__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)); };
  for (int r = 0; r < 16; r++, p += in) {
    __m512 acc[NB][4];
    for (int b = 0; b < NB; b++)
      for (int k = 0; k < 4; k++) acc[b][k] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= whole; i += 64) {
      prefetch(p + i + ahead);
      for (int k = 0; k < 4; k++) {
        const __m512 wv = widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 16 * k)));
        for (int b = 0; b < NB; b++) acc[b][k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xr + b * in + i + 16 * k), acc[b][k]);
      }
    }
    for (int k = 0; i < whole; i += 16, k++) {
      const __m512 wv = widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      for (int b = 0; b < NB; b++) acc[b][k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xr + b * in + i), acc[b][k]);
    }
    if (whole < in) {   // the last 1-15 weights; the rest of the vector reads as zero
      const __m512 wv = widen(_mm_maskz_loadu_epi8(tail, p + whole));
      for (int b = 0; b < NB; b++) acc[b][3] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(tail, xr + b * in + whole), acc[b][3]);
    }
    for (int b = 0; b < NB; b++)
      stash[b][r] = _mm512_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]), _mm512_add_ps(acc[b][2], acc[b][3]));
  }
  const __m512 sc = _mm512_loadu_ps(scale + o0);
  for (int b = 0; b < NB; b++) {
    __m512 v = _mm512_mul_ps(sum_lanes16_ps(stash[b]), sc);
    if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + o0));
    _mm512_storeu_ps(y + (b0 + b) * out + o0, v);
  }
}
#define OS_INT8_ROWS16 1
#elif defined(__AVX2__) && defined(__FMA__)
// Eight fp32 vectors to one: lane r is the sum of a[r]'s lanes.
static inline __m256 sum_lanes8_ps(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// int8_rows16 for CPUs with AVX2 and no AVX-512 (most laptops and desktops): the same walk in memory
// order with 8-lane vectors, four chains of sums per row pair at every batch size, the 16 rows' sums
// reduced 8 at a time; the last in % 32 weights of a row added one by one after the reduction. Against
// int8_tile in an x86-64-v3 build (llama-6x512's matrices, Intel Xeon, decode_products.py --dtype int8):
// one row 6.52 -> 4.59 ms a pass on one thread, 3.93 -> 2.59 ms on two; 8 rows 0.92-0.95x (4 rows' 16
// sums spill from AVX2's 16 registers; 2 rows a pass, widening each weight four times, was slower still).
template <int NB>
static inline void int8_rows16(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                               int64_t b0, int64_t o0, int64_t in, int64_t out, int64_t ahead) {
  __m256 stash[NB][16];
  float tails[NB][16];
  const float* xr = x + b0 * in;
  const int64_t whole = in / 32 * 32;
  const int8_t* p = w + o0 * in;
  auto widen = [](const int8_t* q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
  };
  for (int r = 0; r < 16; r++, p += in) {
    __m256 acc[NB][4];
    for (int b = 0; b < NB; b++)
      for (int k = 0; k < 4; k++) acc[b][k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < whole; i += 32) {
      prefetch(p + i + ahead);
      for (int k = 0; k < 4; k++) {
        const __m256 wv = widen(p + i + 8 * k);
        for (int b = 0; b < NB; b++) acc[b][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr + b * in + i + 8 * k), acc[b][k]);
      }
    }
    for (int b = 0; b < NB; b++) {
      stash[b][r] = _mm256_add_ps(_mm256_add_ps(acc[b][0], acc[b][1]), _mm256_add_ps(acc[b][2], acc[b][3]));
      float t = 0.f;
      for (int64_t j = whole; j < in; j++) t += static_cast<float>(p[j]) * xr[b * in + j];
      tails[b][r] = t;
    }
  }
  for (int b = 0; b < NB; b++)
    for (int h = 0; h < 16; h += 8) {
      __m256 v = _mm256_add_ps(sum_lanes8_ps(stash[b] + h), _mm256_loadu_ps(tails[b] + h));
      v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + o0 + h));
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + o0 + h));
      _mm256_storeu_ps(y + (b0 + b) * out + o0 + h, v);
    }
}
#define OS_INT8_ROWS16 1
#else
#define OS_INT8_ROWS16 0
#endif

// Tasks of whole BLOCK-row weight blocks, at least ~64 KB of weight each, so small matrices stay on
// one thread; f(first block, end block).
template <int BLOCK = ROWS, typename F>
static inline void over_row_blocks(int64_t out, int64_t row_bytes, F&& f) {
  const int64_t blocks = (out + BLOCK - 1) / BLOCK;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, BLOCK * row_bytes));
  kernel_parallel_for(blocks, grain, f);
}

static at::Tensor run_int8(const at::Tensor& x2, const at::Tensor& qweight, const float* scale,
                           const c10::optional<at::Tensor>& bias, c10::IntArrayRef out_shape) {
  const int64_t batch = x2.size(0), in = x2.size(1), out = qweight.size(0);
  at::Tensor y = at::empty({batch, out}, x2.options());
  const float* xp = x2.data_ptr<float>();
  const int8_t* wp = qweight.data_ptr<int8_t>();
  const float* bp = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // whole 16-row blocks in memory order (int8_rows16), the rows after the last one in int8_tile's tiles
  over_row_blocks<16>(out, in, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; blk++) {
#if OS_INT8_ROWS16
      if ((blk + 1) * 16 <= out) {
        over_row_tiles<BT>(batch, [&](auto nb, int64_t b0) {
          int8_rows16<decltype(nb)::value>(xp, wp, scale, bp, yp, b0, blk * 16, in, out, blocks_ahead(16 * in, 1));
        });
        continue;
      }
#endif
      for (int64_t o0 = blk * 16; o0 < std::min(out, blk * 16 + 16); o0 += ROWS)
        over_row_tiles<BT>(batch, [&](auto nb, int64_t b0) {
          int8_tile<decltype(nb)::value>(xp, wp, scale, bp, yp, b0, o0, in, out);
        });
    }
  });
  return y.view(out_shape);
}

// This thread's scratch of at least n floats, reused from call to call (no allocation once grown).
static float* scratch_floats(int64_t n) {
  static thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(n)) scratch.resize(n);
  return scratch.data();
}

// Rounds n floats to bf16 (round_to_bf16) into `into` as floats, adding add[j] after the rounding
// where `add` is given, or (halves) into bf16 bit patterns. A step rounds every activation and every
// output of every bf16 layer: scalar, these took about a third of an 8-row product of llama-6x512.
#if defined(__AVX512F__)
static inline __m512i bf16_rounded_bits16(__m512 v) {   // bf16_rounded_bits on 16 lanes
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)),
                                           _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded,
                                 _mm512_or_si512(bits, _mm512_set1_epi32(0x00400000)));
}
#endif
static void round_to_bf16_floats(const float* x, int64_t n, float* into, const float* add) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 16 <= n; j += 16) {
    __m512 v = _mm512_castsi512_ps(bf16_rounded_bits16(_mm512_loadu_ps(x + j)));
    if (add) v = _mm512_add_ps(v, _mm512_loadu_ps(add + j));
    _mm512_storeu_ps(into + j, v);
  }
#endif
  for (; j < n; j++) into[j] = round_to_bf16(x[j]) + (add ? add[j] : 0.f);
}
static void round_to_bf16_halves(const float* x, int64_t n, uint16_t* into) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(into + j),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_bits16(_mm512_loadu_ps(x + j)), 16)));
#endif
  for (; j < n; j++) into[j] = static_cast<uint16_t>(bf16_rounded_bits(x[j]) >> 16);
}

// quantize.BF16Linear's arithmetic around a product on bf16 weights: the activation rounded to bf16
// before (into `into`), fp32 sums, then the result rounded to bf16 and the bias added last.
static const float* bf16_activation(const float* x, int64_t n, float* into) {
  round_to_bf16_floats(x, n, into, nullptr);
  return into;
}

static void bf16_result(float* y, int64_t rows, int64_t out, const float* bias) {
  for (int64_t r = 0; r < rows; r++) round_to_bf16_floats(y + r * out, out, y + r * out, bias);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define OS_BF16_DOT 1
// bf16 weights in nn.Linear's own row-major layout ([out, in]) on CPUs with AVX-512 BF16: vdpbf16ps
// multiplies 32 bf16 pairs (weight row x activation row, both along the input) into 16 fp32 sums per
// instruction, so a 64-byte line of weights is one load and one instruction, with no widening. The
// activation is rounded to bf16 first (BF16Linear's arithmetic); a product of two bf16 values is exact
// in fp32, so only the order of the fp32 sums differs from the module's torch path (and vdpbf16ps
// treats subnormal inputs and sums as zero). Blocks of BF16_ROWS rows are contiguous, so a thread reads
// its share of the weight front to back, with software prefetch (blocks_ahead). Against the
// column-major kernels of the time (one row split across threads by input, 2-8 rows in register
// tiles; llama-6x512 and pythia-70m's matrices from memory, AMD EPYC,
// interleaved): one row 1.2-1.4x, eight rows 1.4-2.7x; 8 rows per block with 4-16 KB ahead
// (PREFETCH_BYTES) measured best (16 rows, 4 rows and no prefetch were slower).
constexpr int BF16_ROWS = 8;

// y[b, o] = sum_i xb[b, i] * w[o, i] for o in [o0, o0 + R) (rows past `out` read the last row again and
// are not written), b in [b0, b0 + NB); prefetching `ahead` elements further along each row (every
// tile of activation rows prefetches: 1.1-1.3x faster at eight rows than the first tile alone).
template <int R, int NB>
static inline void bf16_dot_tile(const uint16_t* xb, const uint16_t* w, float* y, int64_t b0, int64_t o0,
                                 int64_t in, int64_t out, int64_t ahead) {
  const uint16_t* wr[R];
  for (int r = 0; r < R; r++) wr[r] = w + std::min(o0 + r, out - 1) * in;
  const uint16_t* xr[NB];
  for (int b = 0; b < NB; b++) xr[b] = xb + (b0 + b) * in;
  __m512 acc[R][NB];
  for (int r = 0; r < R; r++)
    for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    for (int r = 0; r < R; r++) prefetch(wr[r] + i + ahead);
    __m512bh wv[R];
    for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_loadu_si512(wr[r] + i);
    for (int b = 0; b < NB; b++) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xr[b] + i);
      for (int r = 0; r < R; r++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], xv);
    }
  }
  if (i < in) {   // the last 1-31 elements; the rest of the vector reads as zero
    const __mmask32 keep = (__mmask32(1) << (in - i)) - 1;
    __m512bh wv[R];
    for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(keep, wr[r] + i);
    for (int b = 0; b < NB; b++) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(keep, xr[b] + i);
      for (int r = 0; r < R; r++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], xv);
    }
  }
  for (int r = 0; r < R && o0 + r < out; r++)
    for (int b = 0; b < NB; b++) y[(b0 + b) * out + o0 + r] = _mm512_reduce_add_ps(acc[r][b]);
}

// NB (1..8) bf16 activation rows against 16 whole weight rows [o0, o0 + 16), read in memory order (the
// block is contiguous: each row whole before the next), as dyn_rows16 does for int8-dynamic:
// each weight vector is loaded once for all NB rows, a row's sums are set aside and reduced 16 rows at
// a time. bf16_dot_tile walks 8 rows side by side and reduces each alone; against it (llama-6x512's
// matrices from huge pages, AMD EPYC, two runs each): one row 2.67-2.69 -> 2.11-2.16 ms a pass on two
// threads, 8 rows 2.65-2.78 -> 2.41-2.60 ms.
template <int NB>
static inline void bf16_rows16(const uint16_t* xb, const uint16_t* w, float* y, int64_t b0, int64_t o0,
                               int64_t in, int64_t out, int64_t ahead) {
  __m512 stash[NB][16];
  const uint16_t* xr = xb + b0 * in;
  const int64_t whole = in / 32 * 32;
  const __mmask32 tail = whole < in ? static_cast<__mmask32>((1ULL << (in - whole)) - 1) : 0;
  const uint16_t* p = w + o0 * in;
  for (int r = 0; r < 16; r++, p += in) {
    // One chain of sums per (weight row, activation row) whatever NB is, so a sequence's bf16 results do
    // not depend on how many others share its step (two chains at one row gave other roundings, and a
    // request served alone and in a batch of four parted ways).
    __m512 acc[NB];
    for (int b = 0; b < NB; b++) acc[b] = _mm512_setzero_ps();
    for (int64_t i = 0; i < whole; i += 32) {
      prefetch(p + i + ahead);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(p + i);
      for (int b = 0; b < NB; b++) acc[b] = _mm512_dpbf16_ps(acc[b], wv, (__m512bh)_mm512_loadu_si512(xr + b * in + i));
    }
    if (whole < in) {   // the last 1-31 elements; the rest of the vector reads as zero
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, p + whole);
      for (int b = 0; b < NB; b++)
        acc[b] = _mm512_dpbf16_ps(acc[b], wv, (__m512bh)_mm512_maskz_loadu_epi16(tail, xr + b * in + whole));
    }
    for (int b = 0; b < NB; b++) stash[b][r] = acc[b];
  }
  for (int b = 0; b < NB; b++) _mm512_storeu_ps(y + (b0 + b) * out + o0, sum_lanes16_ps(stash[b]));
}

static at::Tensor run_bf16_rows(const at::Tensor& x2, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                c10::IntArrayRef out_shape) {
  const int64_t batch = x2.size(0), in = x2.size(1), out = weight.size(0);
  at::Tensor y = at::empty({batch, out}, x2.options());
  // The activation rows rounded to bf16, as bf16 bit patterns, in this thread's scratch.
  uint16_t* xb = reinterpret_cast<uint16_t*>(scratch_floats((batch * in + 1) / 2));
  round_to_bf16_halves(x2.data_ptr<float>(), batch * in, xb);
  const uint16_t* wp = static_cast<const uint16_t*>(weight.data_ptr());
  float* yp = y.data_ptr<float>();
  const int64_t ahead = blocks_ahead(16 * in, 2);
  // whole blocks of 16 rows in memory order (bf16_rows16), up to 8 activation rows at a time; the rows
  // after the last whole block in bf16_dot_tile's tiles
  over_row_blocks<16>(out, in * 2, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; blk++) {
      if ((blk + 1) * 16 <= out) {
        over_row_tiles<8>(batch, [&](auto nb, int64_t b0) {
          bf16_rows16<decltype(nb)::value>(xb, wp, yp, b0, blk * 16, in, out, ahead);
        });
        continue;
      }
      for (int64_t o0 = blk * 16; o0 < out; o0 += BF16_ROWS)
        over_row_tiles<BT>(batch, [&](auto nb, int64_t b0) {
          constexpr int NB = decltype(nb)::value;
          if constexpr (NB <= 2) {   // 8 x NB sums in registers
            bf16_dot_tile<BF16_ROWS, NB>(xb, wp, yp, b0, o0, in, out, ahead);
          } else {                   // 4 x NB twice
            bf16_dot_tile<BF16_ROWS / 2, NB>(xb, wp, yp, b0, o0, in, out, ahead);
            bf16_dot_tile<BF16_ROWS / 2, NB>(xb, wp, yp, b0, o0 + BF16_ROWS / 2, in, out, ahead);
          }
        });
    }
  });
  bf16_result(yp, batch, out, bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr);
  return y.view(out_shape);
}
#else
#define OS_BF16_DOT 0
#endif

// Weight elements as fp32: fp32 as is, bf16 (stored as uint16_t) widened.
static inline vec wload(const float* p) { return vload(p); }
static inline vec wload(const uint16_t* p) { return vload_bf16(p); }
static inline float wvalue(float w) { return w; }
static inline float wvalue(uint16_t w) { return bf16_to_float(w); }

// Column-major weights (storage [in, out], as prepare_for_decoding stores the matrices whose output
// is longer than their input): NB activation rows x the outputs [o_begin, o_end), vectors along the
// outputs, so no horizontal sums. The whole vectors are taken COL_SPAN outputs at a time, K storage rows
// at a time, each row's span read front to back, the NB x span sums kept in L1 and the K x NB
// activations broadcast in registers (K x NB broadcasts + K weights + one sum fit the registers: 32
// with AVX-512, 16 with AVX2); the last outputs short of a vector one by one. Each output's sum is one
// chain of FMAs over i in order, whatever NB, K or the thread count: a row gets the same bits alone and
// in a batch. The tiles this replaces (J vectors x NB rows in registers, each tile walking all storage
// rows, J * 64 bytes of each a storage row apart: a strided walk the hardware prefetchers do not
// follow) summed in the same order; one row had an input-split kernel of its own, or torch's
// matrix-vector path. llama-6x512's matrices (decode_products.py, Intel Xeon, fraction of the read
// bandwidth probed beside them, one thread / two): 8 rows 0.65 / 0.59 (tiles) -> 0.85-0.91 / 0.79-0.80;
// one row 0.85-1.1 / 0.76-0.98 (the input-split kernel, torch) -> 0.99-1.14 / 0.89-0.97 (bf16 and fp32).
// An AVX2 build: 8 rows 0.39 / 0.38 -> 0.55 / 0.50 (fp32).
constexpr int64_t COL_PREFETCH_ROWS = 8;   // storage rows ahead (the hardware prefetchers stop at a row's end)
template <int NB, typename W>
static void col_rows(const float* x, const W* wt, const float* bias, float* y, int64_t b0,
                     int64_t o_begin, int64_t o_end, int64_t in, int64_t out) {
  constexpr int K = std::max(1, std::min(8, (OS_LANES == 16 ? 30 : 14) / (NB + 1)));
  constexpr int64_t COL_SPAN = std::max<int64_t>(OS_LANES, 3072 / NB / OS_LANES * OS_LANES);   // 12 KB of sums
  alignas(64) float sums[NB][COL_SPAN];
  const float* xb = x + b0 * in;
  const int64_t o_vectors = o_begin + (o_end - o_begin) / OS_LANES * OS_LANES;
  for (int64_t c = o_begin; c < o_vectors; c += COL_SPAN) {
    const int64_t span = std::min(COL_SPAN, o_vectors - c);
    for (int b = 0; b < NB; b++)
      for (int64_t v = 0; v < span; v += OS_LANES) vstore(&sums[b][v], vzero());
    auto rows = [&](auto k_count, int64_t i0) {   // storage rows [i0, i0 + KC) into the sums
      constexpr int KC = decltype(k_count)::value;
      vec xs[NB][KC];
      for (int b = 0; b < NB; b++)
        for (int k = 0; k < KC; k++) xs[b][k] = vset1(xb[b * in + i0 + k]);
      const W* w0 = wt + i0 * out + c;
      for (int64_t v = 0; v < span; v += OS_LANES) {
        if (i0 + KC + COL_PREFETCH_ROWS < in)
          for (int k = 0; k < KC; k++) prefetch(w0 + (COL_PREFETCH_ROWS + k) * out + v);
        vec wv[KC];
        for (int k = 0; k < KC; k++) wv[k] = wload(w0 + k * out + v);
        for (int b = 0; b < NB; b++) {
          vec a = vload(&sums[b][v]);
          for (int k = 0; k < KC; k++) a = vfma(wv[k], xs[b][k], a);
          vstore(&sums[b][v], a);
        }
      }
    };
    int64_t i = 0;
    for (; i + K <= in; i += K) rows(std::integral_constant<int, K>{}, i);
    for (; i < in; i++) rows(std::integral_constant<int, 1>{}, i);
    for (int b = 0; b < NB; b++)
      for (int64_t v = 0; v < span; v += OS_LANES) {
        vec a = vload(&sums[b][v]);
        if (bias) a = vadd(a, vload(bias + c + v));
        vstore(y + (b0 + b) * out + c + v, a);
      }
  }
  for (int64_t o = o_vectors; o < o_end; o++)
    for (int b = 0; b < NB; b++) {
      float s = 0.f;
      for (int64_t i = 0; i < in; i++) s += x[(b0 + b) * in + i] * wvalue(wt[i * out + o]);
      y[(b0 + b) * out + o] = s + (bias ? bias[o] : 0.f);
    }
}

// W: float, or uint16_t for bf16 weights (BF16Linear's arithmetic: bf16_activation, bf16_result).
template <typename W = float>
static at::Tensor run_col(const at::Tensor& x2, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          c10::IntArrayRef out_shape) {
  constexpr bool bf16 = std::is_same<W, uint16_t>::value;
  const int64_t batch = x2.size(0), in = x2.size(1), out = weight.size(0);
  at::Tensor y = at::empty({batch, out}, x2.options());
  const float* xp = x2.data_ptr<float>();
  if (bf16) xp = bf16_activation(xp, batch * in, scratch_floats(batch * in));
  const W* wp = static_cast<const W*>(weight.data_ptr());
  const float* bias_p = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
  const float* bp = bf16 ? nullptr : bias_p;   // bf16 adds it after rounding
  float* yp = y.data_ptr<float>();
  // Outputs per task: up to 24 vectors, fewer when that would leave under 4 tasks per thread (a
  // 512-output matrix in 384-output tasks ran 1.3x slower on two threads than in one).
  const int64_t vectors = (out + OS_LANES - 1) / OS_LANES;
  const int64_t threads = kernel_threads();
  const int64_t chunk_vectors = std::min<int64_t>(24, std::max<int64_t>(3, (vectors + 4 * threads - 1) / (4 * threads)));
  const int64_t CHUNK = chunk_vectors * OS_LANES;
  const int64_t chunks = (out + CHUNK - 1) / CHUNK;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / (CHUNK * in * 4));
  kernel_parallel_for(chunks, grain, [&](int64_t begin, int64_t end) {
    const int64_t o_begin = begin * CHUNK, o_end = std::min(out, end * CHUNK);
    over_row_tiles<8>(batch, [&](auto nb, int64_t b0) {
      col_rows<decltype(nb)::value, W>(xp, wp, bp, yp, b0, o_begin, o_end, in, out);
    });
  });
  if (bf16) bf16_result(yp, batch, out, bias_p);
  return y.view(out_shape);
}

static std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out);
static bool column_major(const at::Tensor& w);
static int64_t rows_of(const at::Tensor& x);
static bool operands_fit(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// quantize.BF16Linear's forward. With AVX-512 BF16: 1-32 fp32 rows against the row-major weight
// (run_bf16_rows). Otherwise 1-32 rows against a column-major weight (run_col).
// The rest is the module's torch path, y = (x.bf16 @ w.T).float() + bias.
at::Tensor decode_linear_bf16(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const int64_t rows = rows_of(x);
#if OS_BF16_DOT
  if (operands_fit(x, weight, bias) && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() &&
      rows >= 1 && rows <= MAX_BF16_ROWS && weight.size(0) > 0)
    return run_bf16_rows(x.reshape({-1, x.size(-1)}).contiguous(), weight, bias, output_shape(x, weight.size(0)));
#endif
  if (operands_fit(x, weight, bias) && weight.scalar_type() == at::kBFloat16 && column_major(weight) &&
      rows >= 1 && rows <= MAX_BF16_ROWS) {
    const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
    return run_col<uint16_t>(x2, weight, bias, output_shape(x, weight.size(0)));
  }
  TorchThreadsForFallback threads;
  at::Tensor y = at::linear(x.to(weight.scalar_type()), weight).to(x.scalar_type());
  if (bias.has_value() && bias->defined()) y = y + bias->to(y.scalar_type());
  return y;
}

// int8 x int8 (int8-dynamic): each activation row is rounded to int8 with its own scale
// (max|x| / 127) and stored biased by +128 as uint8, because AVX-512 VNNI's vpdpbusd multiplies
// unsigned by signed bytes, four pairs per 32-bit lane: sum_i (xq_i + 128) w_i = sum_i xq_i w_i +
// 128 sum_i w_i, and the last term (wsum, per output row) is subtracted. Integer sums are exact;
// y = x_scale * w_scale * (acc - 128 wsum) + bias.
static inline int32_t dot_u8s8_tail(const uint8_t* xu, const int8_t* w, int64_t from, int64_t in) {
  int32_t s = 0;
  for (int64_t j = from; j < in; j++) s += static_cast<int32_t>(xu[j]) * static_cast<int32_t>(w[j]);
  return s;
}

template <int NB>
static inline void dyn_tile(const uint8_t* xu, const float* xscale, const int8_t* w, const float* wscale,
                            const int32_t* wsum, const float* bias, float* y, int64_t b0, int64_t o0,
                            int64_t in, int64_t in_pad, int64_t out) {
  const int8_t* wr[ROWS];
  for (int r = 0; r < ROWS; r++) wr[r] = w + (o0 + r < out ? o0 + r : o0) * in;
  int32_t sums[ROWS][NB];
  int64_t i = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512i acc[ROWS][NB];
  for (int r = 0; r < ROWS; r++)
    for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_si512();
  const int64_t ahead = blocks_ahead(ROWS * in, 1);
  for (; i + 64 <= in; i += 64) {
    for (int r = 0; r < ROWS; r++)
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + i + ahead), _MM_HINT_T0);
    __m512i wv[ROWS];
    for (int r = 0; r < ROWS; r++) wv[r] = _mm512_loadu_si512(wr[r] + i);
    for (int b = 0; b < NB; b++) {
      const __m512i xv = _mm512_loadu_si512(xu + (b0 + b) * in_pad + i);
      for (int r = 0; r < ROWS; r++) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], xv, wv[r]);
    }
  }
  for (int r = 0; r < ROWS; r++)
    for (int b = 0; b < NB; b++) sums[r][b] = _mm512_reduce_add_epi32(acc[r][b]);
#else
  for (int r = 0; r < ROWS; r++)
    for (int b = 0; b < NB; b++) sums[r][b] = 0;
#endif
  for (int r = 0; r < ROWS; r++) {
    const int64_t o = o0 + r;
    if (o >= out) break;
    for (int b = 0; b < NB; b++) {
      const int32_t total = sums[r][b] + dot_u8s8_tail(xu + (b0 + b) * in_pad, wr[r], i, in) - 128 * wsum[o];
      float v = static_cast<float>(total) * xscale[b0 + b] * wscale[o];
      if (bias) v += bias[o];
      y[(b0 + b) * out + o] = v;
    }
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// Sixteen int32 vectors to one: lane r is the sum of a[r]'s lanes (unpack and add within 128-bit lanes,
// then across them): 45 instructions for 16 rows, where a reduction per row took about 10 each.
static inline __m512i sum_lanes16(__m512i* a) {
  __m512i b[8], c[4];
  for (int k = 0; k < 8; k++)
    b[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_epi32(a[2 * k], a[2 * k + 1]));
  for (int k = 0; k < 4; k++)
    c[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * k], b[2 * k + 1]), _mm512_unpackhi_epi64(b[2 * k], b[2 * k + 1]));
  // c[k]'s 128-bit lane l holds lane l's share of rows 4k..4k+3; add the four lanes of each c[k]
  const __m512i e0 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_i32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i e1 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_i32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// NB (1..8) activation rows against 16 whole weight rows [o0, o0 + 16), read in memory order: the block
// is contiguous, so each row is read whole before the next; each weight vector is loaded once and
// multiplied with all NB rows (the last partial 64 bytes with a byte mask: zeros past the row, so the
// next row's bytes never enter a sum); a weight row's NB sums are set aside (in L1) and reduced 16 rows
// at a time, then scaled as one vector. dyn_tile walks 4 rows side by side and reduces each row alone:
// llama-6x512's matrices (from huge pages, AMD EPYC, one thread, one row) read at 17.6-19.0 GB/s that
// way (0.62-0.68 of the read bandwidth probed beside them), 28.3-29.9 GB/s (0.95-1.06) this way.
// Walking these 16 rows side by side, like dyn_tile, was no faster than dyn_tile; two chains of sums a
// row at one row no faster than one.
template <int NB>
static inline void dyn_rows16(const uint8_t* xu, const float* xscale, const int8_t* w, const float* wscale,
                              const int32_t* wsum, const float* bias, float* y, int64_t b0, int64_t o0,
                              int64_t in, int64_t in_pad, int64_t out) {
  __m512i stash[NB][16];
  const int8_t* block = w + o0 * in;
  const uint8_t* xs = xu + b0 * in_pad;
  const int64_t ahead = blocks_ahead(16 * in, 1);
  const int64_t whole = in / 64 * 64;
  const __mmask64 tail = _cvtu64_mask64(whole < in ? ~0ULL >> (64 - (in - whole)) : 0);
  const int8_t* p = block;
  for (int r = 0; r < 16; r++, p += in) {
    __m512i acc[NB];
    for (int b = 0; b < NB; b++) acc[b] = _mm512_setzero_si512();
    for (int64_t i = 0; i < whole; i += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i + ahead), _MM_HINT_T0);
      const __m512i wv = _mm512_loadu_si512(p + i);
      for (int b = 0; b < NB; b++) acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_loadu_si512(xs + b * in_pad + i), wv);
    }
    if (whole < in) {
      const __m512i wv = _mm512_maskz_loadu_epi8(tail, p + whole);
      for (int b = 0; b < NB; b++)
        acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_maskz_loadu_epi8(tail, xs + b * in_pad + whole), wv);
    }
    for (int b = 0; b < NB; b++) stash[b][r] = acc[b];
  }
  const __m512i bias128 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + o0), 7);   // the +128 of xu (dyn_tile)
  const __m512 ws = _mm512_loadu_ps(wscale + o0);
  for (int b = 0; b < NB; b++) {   // dyn_tile's order of operations
    const __m512i total = _mm512_sub_epi32(sum_lanes16(stash[b]), bias128);
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(xscale[b0 + b])), ws);
    if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + o0));
    _mm512_storeu_ps(y + (b0 + b) * out + o0, v);
  }
}
#define OS_DYN_ROWS16 1
#elif defined(__AVX2__)
// Eight int32 vectors to one: lane r is the sum of a[r]'s lanes.
static inline __m256i sum_lanes8(const __m256i* a) {
  const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
  const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

// dyn_rows16 for CPUs with AVX2 and no AVX-512 VNNI (most laptops and desktops, and AVX-512 CPUs
// before VNNI), where dyn_tile had only its scalar loop. AVX2 multiplies bytes with vpmaddubsw
// (unsigned x signed, adjacent pairs summed into int16 with saturation), so the biased activations
// (xq + 128, up to 255) would saturate; instead |w| (an unsigned byte: 128 for -128) multiplies xq with
// w's sign (|xq| <= 127), pairs of at most 2 x 128 x 127 = 32512, which fit. vpmaddwd then adds pairs
// of those into int32 lanes. The sums are sum_i xq_i w_i exactly, the integer dyn_rows16 gets after it
// takes away 128 sum_i w_i, so y is the same to the bit; same walk in memory order, 8-lane vectors.
// Against dyn_tile's scalar loop in an x86-64-v3 build (llama-6x512's matrices, Intel Xeon,
// decode_products.py --dtype int8-dynamic): one row 6.93 -> 3.35 ms a pass on one thread (0.47 -> 0.93
// of the probed read bandwidth), 3.94 -> 2.64 ms on two; 8 rows 40.5 -> 9.1 ms and 21.6 -> 7.5 ms.
template <int NB>
static inline void dyn_rows16(const uint8_t* xu, const float* xscale, const int8_t* w, const float* wscale,
                              const int32_t* wsum, const float* bias, float* y, int64_t b0, int64_t o0,
                              int64_t in, int64_t in_pad, int64_t out) {
  (void)wsum;
  __m256i stash[NB][16];
  int32_t tails[NB][16];   // the last in % 32 products of a row, one by one
  const uint8_t* xs = xu + b0 * in_pad;
  const int64_t ahead = blocks_ahead(16 * in, 1);
  const int64_t whole = in / 32 * 32;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  const int8_t* p = w + o0 * in;
  for (int r = 0; r < 16; r++, p += in) {
    __m256i acc[NB];
    for (int b = 0; b < NB; b++) acc[b] = _mm256_setzero_si256();
    for (int64_t i = 0; i < whole; i += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i + ahead), _MM_HINT_T0);
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
      const __m256i wabs = _mm256_abs_epi8(wv);
      for (int b = 0; b < NB; b++) {
        const __m256i xq = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + b * in_pad + i)), flip);
        acc[b] = _mm256_add_epi32(acc[b], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xq, wv)), ones));
      }
    }
    for (int b = 0; b < NB; b++) {
      stash[b][r] = acc[b];
      int32_t t = 0;
      for (int64_t j = whole; j < in; j++) t += (static_cast<int32_t>(xs[b * in_pad + j]) - 128) * static_cast<int32_t>(p[j]);
      tails[b][r] = t;
    }
  }
  for (int b = 0; b < NB; b++)   // dyn_tile's order of operations
    for (int h = 0; h < 16; h += 8) {
      const __m256i total = _mm256_add_epi32(sum_lanes8(stash[b] + h),
                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tails[b] + h)));
      __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(xscale[b0 + b])),
                               _mm256_loadu_ps(wscale + o0 + h));
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + o0 + h));
      _mm256_storeu_ps(y + (b0 + b) * out + o0 + h, v);
    }
}
#define OS_DYN_ROWS16 1
#else
#define OS_DYN_ROWS16 0
#endif

at::Tensor decode_linear_int8_dynamic(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& wscale,
                                      const at::Tensor& wsum, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().type() == c10::DeviceType::CPU, "decode_linear_int8_dynamic runs on the CPU");
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.dim() == 2 && qweight.is_contiguous(),
              "decode_linear_int8_dynamic: qweight must be contiguous int8 [out, in]");
  TORCH_CHECK(x.size(-1) == qweight.size(1), "decode_linear_int8_dynamic: x has ", x.size(-1),
              " features, the weight ", qweight.size(1));
  const int64_t in = qweight.size(1), out = qweight.size(0);
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.numel() == out && wscale.is_contiguous(),
              "decode_linear_int8_dynamic: wscale must be fp32 [out]");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.numel() == out && wsum.is_contiguous(),
              "decode_linear_int8_dynamic: wsum must be int32 [out]");
  TORCH_CHECK(!bias.has_value() || !bias->defined() || bias->numel() == out,
              "decode_linear_int8_dynamic: bias has ", bias.has_value() && bias->defined() ? bias->numel() : 0,
              " elements, the weight ", out, " outputs");
  const at::Tensor xf = x.reshape({-1, in}).to(at::kFloat).contiguous();
  const int64_t batch = xf.size(0);
  const int64_t in_pad = (in + 63) / 64 * 64;
  at::Tensor xu = at::empty({batch, in_pad}, xf.options().dtype(at::kByte));
  at::Tensor xscale = at::empty({batch}, xf.options());
  const float* xp = xf.data_ptr<float>();
  uint8_t* xup = xu.data_ptr<uint8_t>();
  float* xsp = xscale.data_ptr<float>();
  for (int64_t b = 0; b < batch; b++) {
    const float* row = xp + b * in;
    uint8_t* dst = xup + b * in_pad;
    int64_t i = 0;
    float amax = 0.f;
#if defined(__AVX512F__)
    // 16 lanes at a time, the same values as the scalar loop below: max is exact in any order, and
    // cvtps_epi32 rounds to nearest even as nearbyint does (the default rounding mode)
    __m512 top = _mm512_setzero_ps();
    for (; i + 16 <= in; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
    amax = _mm512_reduce_max_ps(top);
#endif
    for (; i < in; i++) amax = std::max(amax, std::abs(row[i]));
    const float scale = amax > 0.f ? amax / 127.f : 1.f;
    const float inv = 1.f / scale;
    i = 0;
#if defined(__AVX512F__)
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), offset = _mm512_set1_epi32(128);
    for (; i + 16 <= in; i += 16) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + i), vinv));
      q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), offset);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(q));
    }
#endif
    for (; i < in; i++) {
      const float q = std::nearbyint(row[i] * inv);
      dst[i] = static_cast<uint8_t>(static_cast<int32_t>(std::min(127.f, std::max(-127.f, q))) + 128);
    }
    for (int64_t j = in; j < in_pad; j++) dst[j] = 128;
    xsp[b] = scale;
  }
  const at::Tensor bias_f = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({batch, out}, xf.options());
  const int8_t* wp = qweight.data_ptr<int8_t>();
  const float* wsp = wscale.data_ptr<float>();
  const int32_t* wsump = wsum.data_ptr<int32_t>();
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // whole 16-row blocks in memory order (dyn_rows16), up to 8 activation rows at a time; the rows after
  // the last whole block in dyn_tile's tiles
  over_row_blocks<16>(out, in, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; blk++) {
#if OS_DYN_ROWS16
      if ((blk + 1) * 16 <= out) {
        over_row_tiles<8>(batch, [&](auto nb, int64_t b0) {
          dyn_rows16<decltype(nb)::value>(xup, xsp, wp, wsp, wsump, bp, yp, b0, blk * 16, in, in_pad, out);
        });
        continue;
      }
#endif
      for (int64_t o = blk * 16; o < std::min(out, blk * 16 + 16); o += ROWS)
        over_row_tiles<BT>(batch, [&](auto nb, int64_t b0) {
          dyn_tile<decltype(nb)::value>(xup, xsp, wp, wsp, wsump, bp, yp, b0, o, in, in_pad, out);
        });
    }
  });
  return y.view(output_shape(x, out)).to(x.scalar_type());
}

static std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return shape;
}

static int64_t rows_of(const at::Tensor& x) {
  return x.numel() / std::max<int64_t>(1, x.size(-1));
}

// fp32 activations on the CPU that fit the weight and bias; anything else goes to torch's product,
// which says what is wrong with it.
static bool operands_fit(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  if (x.device().type() != c10::DeviceType::CPU || x.scalar_type() != at::kFloat || x.dim() < 1) return false;
  if (weight.dim() != 2 || weight.size(1) != x.size(-1)) return false;
  return !(bias.has_value() && bias->defined() &&
           (bias->scalar_type() != at::kFloat || !bias->is_contiguous() || bias->numel() != weight.size(0)));
}

static bool kernel_applies(const at::Tensor& x, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  const int64_t rows = rows_of(x);
  return operands_fit(x, weight, bias) && rows >= 1 && rows <= MAX_BATCH;
}

static bool column_major(const at::Tensor& w) {
  return w.stride(0) == 1 && w.stride(1) == w.size(0);
}

// torch's oneDNN product (mkldnn::_linear_pointwise, what openseason.linear calls), through the
// dispatcher: it is not part of ATen's C++ API.
static at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.emplace_back(x);
  stack.emplace_back(weight);
  stack.emplace_back(bias.has_value() && bias->defined() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// fp32: column-major weights with 1-16 activation rows take run_col, one chain of sums per output
// whatever the row count, so a sequence gets the same bits alone and in a batch (one row had its own
// kernel, which split the input across threads, and torch's matrix-vector path on Intel CPUs: a request
// could decode another text alone than in a batch). `avoid_blas` says torch's BLAS is the slow library on
// this CPU (openseason.linear chose oneDNN over it: MKL on an AMD CPU): then more than 16 rows (prefill,
// big batches) go to oneDNN (2-2.5x MKL). Everything else stays with torch's product.
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         bool avoid_blas) {
  const int64_t rows = rows_of(x);
  const bool fp32 = operands_fit(x, weight, bias) && weight.scalar_type() == at::kFloat;
  if (fp32 && avoid_blas && rows > MAX_FP32_ROWS && x.dim() >= 2) {
    TorchThreadsForFallback threads;
    return onednn_linear(x, weight, bias);
  }
  if (!fp32 || !column_major(weight) || rows < 1 || rows > MAX_FP32_ROWS) {
    TorchThreadsForFallback threads;
    return at::linear(x, weight, bias);
  }
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  return run_col(x2, weight, bias, output_shape(x, weight.size(0)));
}


at::Tensor decode_linear_int8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                              const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(qweight.scalar_type() == at::kChar && qweight.dim() == 2, "decode_linear_int8: qweight must be int8 [out, in]");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == qweight.size(0) && scale.is_contiguous(),
              "decode_linear_int8: scale must be fp32 [out]");
  if (!kernel_applies(x, qweight, bias) || !qweight.is_contiguous()) {
    // Prefill and the rest: torch's int8 x bf16 kernel where it has one (quantize.Int8Linear's path).
    TorchThreadsForFallback threads;
    at::Tensor x2 = x.reshape({-1, x.size(-1)});
    at::Tensor y;
    // (torch 2.13's int8pack kernel crashes on several rows when `in` is not a multiple of 16)
    if (x.device().type() == c10::DeviceType::CPU && qweight.is_contiguous() && qweight.size(1) % 16 == 0) {
      y = at::_weight_int8pack_mm(x2.to(at::kBFloat16), qweight, scale.to(at::kBFloat16)).to(x.scalar_type());
    } else {
      y = at::linear(x2, qweight.to(x.scalar_type()) * scale.to(x.scalar_type()).unsqueeze(1));
    }
    if (bias.has_value() && bias->defined()) y = y + bias->to(y.scalar_type());
    return y.view(output_shape(x, qweight.size(0)));
  }
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  return run_int8(x2, qweight, scale.data_ptr<float>(), bias, output_shape(x, qweight.size(0)));
}

// Attention of one query per sequence over its cached keys and values (a decode step):
// out[b, h] = softmax(scale * q[b, h] . k[b, g] + mask[b, h]) @ v[b, g], g = h / (heads / groups).
// torch's scaled_dot_product_attention sends this shape to its flash kernel, which multiplies through
// its BLAS: MKL's generic matrix-vector code on the AMD EPYC, 20 us a call for llama-6x512 (8 heads,
// 144 keys), 7% of a two-thread int8-dynamic decode step. Here each head is one pass over its keys
// (dot products in registers), a vectorized exp, and one pass over its values, on one thread unless
// the cache is large. Sums run in another order than torch's kernels: results agree to float32
// rounding. A query whose keys are all masked gets zeros, as torch's kernel gives.
#if defined(__AVX512F__)
// exp on 16 lanes: n = round(x log2 e), r = x - n ln 2 (in two parts), a degree-6 polynomial for
// e^r, scaled by 2^n (scalef); within 2 ulp of expf over [-87.3, 88.7]; below -87.3 it is 0.
static inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.7f));
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
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}
#endif

// e[j] = exp(s[j] - top) for j < n, returns their sum (s[j] = -inf gives 0).
static inline float exp_shifted(const float* s, float top, int64_t n, float* e) {
  int64_t j = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  __m512 sum = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(top);
  for (; j + 16 <= n; j += 16) {
    const __m512 v = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), shift));
    _mm512_storeu_ps(e + j, v);
    sum = _mm512_add_ps(sum, v);
  }
  if (j < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 v = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + j), shift)));
    _mm512_mask_storeu_ps(e + j, tail, v);
    sum = _mm512_add_ps(sum, v);
    j = n;
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; j < n; j++) total += e[j] = std::exp(s[j] - top);
  return total;
}

// s[t] = a . b[t * stride] for t < 4: four independent chains, whose horizontal sums overlap.
static inline void dot4(const float* a, const float* b, int64_t stride, int64_t n, float* s) {
  vec acc[4] = {vzero(), vzero(), vzero(), vzero()};
  int64_t d = 0;
  for (; d + OS_LANES <= n; d += OS_LANES) {
    const vec x = vload(a + d);
    for (int t = 0; t < 4; t++) acc[t] = vfma(x, vload(b + t * stride + d), acc[t]);
  }
  for (int t = 0; t < 4; t++) {
    s[t] = vsum(acc[t]);
    for (int64_t r = d; r < n; r++) s[t] += a[r] * b[t * stride + r];
  }
}

static inline float dot(const float* a, const float* b, int64_t n) {
  vec acc = vzero();
  int64_t d = 0;
  for (; d + OS_LANES <= n; d += OS_LANES) acc = vfma(vload(a + d), vload(b + d), acc);
  float s = vsum(acc);
  for (; d < n; d++) s += a[d] * b[d];
  return s;
}

// One (sequence, head): q [hs], keys and values `key_stride` apart, mask (bool or additive, `mask_stride`
// apart along the keys, or none); scratch holds 2 * keys floats. Four keys at a time: four dot products
// in flight, and each block of the output loaded and stored once per four values (llama-6x512's 8 heads
// over 144 keys: 11.8 -> 8.4 us a call, against 16-19 for torch's).
static void attend_one(const float* q, const float* k, const float* v, int64_t keys, int64_t key_stride, int64_t hs,
                       float scale, const bool* bool_mask, const float* add_mask, int64_t mask_stride,
                       float* scratch, float* out) {
  float* s = scratch;
  float* e = scratch + keys;
  int64_t j = 0;
  for (; j + 4 <= keys; j += 4) dot4(q, k + j * key_stride, key_stride, hs, s + j);
  for (; j < keys; j++) s[j] = dot(q, k + j * key_stride, hs);
  float top = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (j = 0; j < keys; j++) {
    float x = s[j] * scale;
    if (bool_mask && !bool_mask[j * mask_stride]) x = -std::numeric_limits<float>::infinity();
    if (add_mask) x += add_mask[j * mask_stride];
    s[j] = x;
    top = std::max(top, x);
    nan = nan || std::isnan(x);
  }
  // a NaN score (an overflowed activation) makes the whole output NaN, as in torch's softmax
  std::fill(out, out + hs, nan ? std::numeric_limits<float>::quiet_NaN() : 0.f);
  if (nan || top == -std::numeric_limits<float>::infinity()) return;   // NaN, or every key masked
  const float inv = 1.f / exp_shifted(s, top, keys, e);
  const int64_t full = hs / OS_LANES * OS_LANES;
  for (j = 0; j + 4 <= keys; j += 4) {
    const float* vj = v + j * key_stride;
    const vec p0 = vset1(e[j]), p1 = vset1(e[j + 1]), p2 = vset1(e[j + 2]), p3 = vset1(e[j + 3]);
    for (int64_t d = 0; d < full; d += OS_LANES) {
      vec acc = vfma(p0, vload(vj + d), vload(out + d));
      acc = vfma(p1, vload(vj + key_stride + d), acc);
      acc = vfma(p2, vload(vj + 2 * key_stride + d), acc);
      vstore(out + d, vfma(p3, vload(vj + 3 * key_stride + d), acc));
    }
    for (int64_t d = full; d < hs; d++)
      for (int t = 0; t < 4; t++) out[d] += e[j + t] * vj[t * key_stride + d];
  }
  for (; j < keys; j++) {
    const float* vj = v + j * key_stride;
    const vec p = vset1(e[j]);
    for (int64_t d = 0; d < full; d += OS_LANES) vstore(out + d, vfma(p, vload(vj + d), vload(out + d)));
    for (int64_t d = full; d < hs; d++) out[d] += e[j] * vj[d];
  }
  for (int64_t d = 0; d < hs; d++) out[d] *= inv;
}

// q [B, heads, 1, hs], k and v [B, groups, keys, hs] (the cache's slices), mask none or broadcastable
// to [B, heads, 1, keys] (bool: True attends; float: added to the scores). Anything else is torch's.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& mask, double scale) {
  const bool shapes = q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1 && k.sizes() == v.sizes() &&
                      k.size(0) == q.size(0) && k.size(3) == q.size(3) && k.size(1) > 0 &&
                      q.size(1) % k.size(1) == 0 && k.stride(3) == 1 && v.stride(3) == 1 &&
                      k.stride(2) == v.stride(2) && k.size(2) > 0;
  const bool types = q.device().is_cpu() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                     v.scalar_type() == at::kFloat;
  const bool has_mask = mask.has_value() && mask->defined();
  bool mask_fits = !has_mask;
  if (has_mask && shapes && mask->dim() == 4 && (mask->scalar_type() == at::kBool || mask->scalar_type() == at::kFloat)) {
    mask_fits = true;
    const int64_t want[4] = {q.size(0), q.size(1), 1, k.size(2)};
    for (int d = 0; d < 4; d++) mask_fits = mask_fits && (mask->size(d) == want[d] || mask->size(d) == 1);
  }
  if (!(shapes && types && mask_fits)) {
    TorchThreadsForFallback threads;
    return at::scaled_dot_product_attention(q, k, v, has_mask ? *mask : c10::optional<at::Tensor>(), 0.0, false,
                                            scale, q.size(1) != k.size(1));
  }
  const int64_t B = q.size(0), heads = q.size(1), groups = k.size(1), keys = k.size(2), hs = q.size(3);
  const at::Tensor qc = q.contiguous();
  at::Tensor m;
  if (has_mask) m = mask->expand({B, heads, 1, keys});
  at::Tensor out = at::empty({B, heads, 1, hs}, q.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const bool* bm = has_mask && m.scalar_type() == at::kBool ? m.data_ptr<bool>() : nullptr;
  const float* am = has_mask && m.scalar_type() == at::kFloat ? m.data_ptr<float>() : nullptr;
  const int64_t per_group = heads / groups;
  // a thread per ~256 KB of keys and values read, so a short cache stays on one thread
  const int64_t bytes = B * heads * keys * hs * 2 * static_cast<int64_t>(sizeof(float));
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({kernel_threads(), bytes / (256 * 1024), B * heads}));
  kernel_parallel_for(B * heads, (B * heads + parts - 1) / parts, [&](int64_t begin, int64_t end) {
    float* scratch = scratch_floats(2 * keys);
    for (int64_t u = begin; u < end; u++) {
      const int64_t b = u / heads, h = u % heads, g = h / per_group;
      const int64_t mask_at = has_mask ? b * m.stride(0) + h * m.stride(1) : 0;
      attend_one(qp + u * hs, kp + b * k.stride(0) + g * k.stride(1), vp + b * v.stride(0) + g * v.stride(1),
                 keys, k.stride(2), hs, static_cast<float>(scale), bm ? bm + mask_at : nullptr,
                 am ? am + mask_at : nullptr, has_mask ? m.stride(3) : 0, scratch, op + u * hs);
    }
  });
  return out;
}

// The layout prepare_for_decoding stores bf16 weights in for decode_linear_bf16 on this build.
std::string bf16_weight_layout() { return OS_BF16_DOT ? "row" : "column"; }

// From now on, this thread's kernel calls run on the kernels' team of `threads` (0 or 1: on torch's
// threads again), and torch's own operations on one thread (again on as many as before); returns the
// previous value. AheadOfTimeStep sets it around a step.
int64_t set_step_threads(int64_t threads) {
  static thread_local int64_t torch_threads_outside = 1;
  const int64_t previous = step_threads;
  if (threads > 1 && previous <= 1) {
    torch_threads_outside = at::get_num_threads();
    set_torch_threads(1);
  } else if (threads <= 1 && previous > 1) {
    set_torch_threads(torch_threads_outside);
  }
  step_threads = threads > 1 ? threads : 0;
  return previous;
}

}  // namespace

TORCH_LIBRARY(openseason, m) {
  m.def("decode_linear(Tensor x, Tensor weight, Tensor? bias, bool avoid_blas=False) -> Tensor");
  m.def("decode_linear_int8(Tensor x, Tensor qweight, Tensor scale, Tensor? bias) -> Tensor");
  m.def("decode_linear_int8_dynamic(Tensor x, Tensor qweight, Tensor wscale, Tensor wsum, Tensor? bias) -> Tensor");
  m.def("decode_linear_bf16(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("bf16_weight_layout() -> str", &bf16_weight_layout);
  m.def("set_step_threads(int threads) -> int", &set_step_threads);
}

TORCH_LIBRARY_IMPL(openseason, CPU, m) {
  m.impl("decode_linear", &decode_linear);
  m.impl("decode_linear_int8", &decode_linear_int8);
  m.impl("decode_linear_int8_dynamic", &decode_linear_int8_dynamic);
  m.impl("decode_linear_bf16", &decode_linear_bf16);
  m.impl("decode_attention", &decode_attention);
}
