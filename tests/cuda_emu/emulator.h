// A host emulation of the parts of the CUDA execution model that the
// samplewt_ops kernels use, so that CI runs the very kernel templates of
// csrc/cuda/ on the CPU (tests/test_cuda_emulation.py).
//
// - A launch runs its blocks one after another. The threads of a block are
//   fibers (ucontext) on one OS thread; each runs until it reaches a barrier
//   (__syncthreads, or a warp-level sync inside __syncwarp, a shuffle or a
//   vote) or returns. Each sweep over the fibers takes a new pseudo-random
//   order, so a read that a missing barrier leaves unordered sees stale data.
// - __shared__ variables are static locals: one copy, shared by the fibers
//   of the block that runs.
// - Barriers are checked: every thread of the block (or all 32 lanes of the
//   warp) must reach the same barrier; an exited thread, a divergent count
//   or a deadlock fails the launch with a std::runtime_error.
// - Atomics are plain read-modify-writes (fibers never preempt each other).
// - __half and __nv_bfloat16 are 16-bit storage types converted through
//   float with round-to-nearest-even, as on the device.
// Not emulated: streams (launches are synchronous), memory spaces, timing.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace swt_emu {

enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone };

struct Thread {
  ucontext_t ctx;
  uint3 idx;
  State state = State::kReady;
  long block_syncs = 0, warp_syncs = 0;
};

struct Block {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  std::vector<Thread> threads;
  std::vector<uint64_t> slots;  // 32 exchange words per warp
  ucontext_t scheduler;
  int current = 0;
  const std::function<void()>* body = nullptr;
  std::string error;
};

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}
inline Block& block() { return *current_block(); }
inline Thread& self() { return block().threads[block().current]; }

inline cudaError_t& last_error() {
  static cudaError_t e = cudaSuccess;
  return e;
}

// Fibers' stacks, kept between launches.
inline char* stack(size_t i, size_t bytes) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= i) stacks.emplace_back(new char[bytes]);
  return stacks[i].get();
}
constexpr size_t kStackBytes = 256 * 1024;

inline void yield() { swapcontext(&self().ctx, &block().scheduler); }

// Fails the launch from inside a thread: the scheduler throws.
[[noreturn]] inline void fail(const std::string& what) {
  if (block().error.empty()) block().error = what;
  self().state = State::kDone;
  setcontext(&block().scheduler);
  std::abort();  // unreachable
}

inline void thread_entry() {
  (*block().body)();
  self().state = State::kDone;  // uc_link resumes the scheduler
}

inline void sync_block() {
  ++self().block_syncs;
  self().state = State::kBlockBarrier;
  yield();
}

inline void sync_warp(unsigned mask) {
  if (mask != 0xffffffffu) fail("emulated CUDA: only full-warp masks are supported");
  ++self().warp_syncs;
  self().state = State::kWarpBarrier;
  yield();
}

inline std::string describe(const Block& b) {
  std::string s = " (block " + std::to_string(b.block_idx.x) + ": ";
  for (size_t i = 0; i < b.threads.size() && i < 64; ++i) {
    const char* c = "R";
    switch (b.threads[i].state) {
      case State::kBlockBarrier: c = "B"; break;
      case State::kWarpBarrier: c = "W"; break;
      case State::kDone: c = "."; break;
      default: break;
    }
    s += c;
  }
  return s + ")";
}

// A new order of the threads for each sweep, from a fixed-seed generator:
// runs repeat exactly, and unordered accesses still interleave differently.
inline void shuffle(std::vector<int>& order) {
  static uint64_t state = 0x9e3779b97f4a7c15ull;
  for (size_t i = order.size(); i > 1; --i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    std::swap(order[i - 1], order[state % i]);
  }
}

// Runs one block to completion; throws on a failed or inconsistent sync.
inline void run_block(Block& b) {
  const int n = static_cast<int>(b.threads.size());
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t = Thread{};
    t.idx = {static_cast<unsigned>(i), 0u, 0u};
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stack(static_cast<size_t>(i), kStackBytes);
    t.ctx.uc_stack.ss_size = kStackBytes;
    t.ctx.uc_link = &b.scheduler;
    makecontext(&t.ctx, thread_entry, 0);
  }
  const int warps = (n + 31) / 32;
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[i] = i;
  for (;;) {
    shuffle(order);
    bool ran = false;
    for (int i : order) {
      if (b.threads[i].state != State::kReady) continue;
      b.current = i;
      swapcontext(&b.scheduler, &b.threads[i].ctx);
      if (!b.error.empty()) throw std::runtime_error(b.error + describe(b));
      ran = true;
    }
    int done = 0, at_block = 0;
    for (const Thread& t : b.threads) {
      done += t.state == State::kDone;
      at_block += t.state == State::kBlockBarrier;
    }
    if (done == n) return;
    bool released = false;
    for (int w = 0; w < warps; ++w) {
      const int lo = 32 * w, hi = lo + 32 < n ? lo + 32 : n;
      int at_warp = 0;
      for (int i = lo; i < hi; ++i) at_warp += b.threads[i].state == State::kWarpBarrier;
      if (at_warp == 0) continue;
      if (at_warp == 32) {
        for (int i = lo; i < hi; ++i) {
          if (b.threads[i].warp_syncs != b.threads[lo].warp_syncs) {
            throw std::runtime_error("emulated CUDA: lanes of a warp meet at different warp syncs" +
                                     describe(b));
          }
          b.threads[i].state = State::kReady;
        }
        released = true;
      } else if (hi - lo < 32) {
        throw std::runtime_error("emulated CUDA: full-warp sync in a partial warp" + describe(b));
      }
    }
    if (at_block > 0 && at_block + done == n) {
      if (done > 0) {
        throw std::runtime_error("emulated CUDA: __syncthreads not reached by exited threads" +
                                 describe(b));
      }
      for (Thread& t : b.threads) {
        if (t.block_syncs != b.threads[0].block_syncs) {
          throw std::runtime_error("emulated CUDA: threads meet at different __syncthreads" +
                                   describe(b));
        }
        t.state = State::kReady;
      }
      released = true;
    }
    if (!ran && !released) {
      throw std::runtime_error("emulated CUDA: deadlock (R ready, B __syncthreads, W warp sync, "
                               ". exited)" + describe(b));
    }
  }
}

inline void run_grid(dim3 grid, dim3 blk, const std::function<void()>& body) {
  if (grid.x == 0 || blk.x == 0 || blk.x > 1024 || grid.y != 1 || grid.z != 1 || blk.y != 1 ||
      blk.z != 1) {
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  Block b;
  b.block_dim = blk;
  b.grid_dim = grid;
  b.threads.resize(blk.x);
  b.slots.assign(32 * ((blk.x + 31) / 32), 0);
  b.body = &body;
  struct Restore {
    Block* prev;
    ~Restore() { current_block() = prev; }
  } restore{current_block()};
  current_block() = &b;
  for (unsigned x = 0; x < grid.x; ++x) {
    b.block_idx = {x, 0u, 0u};
    run_block(b);
  }
}

template <class... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, blk;
  template <class... Args>
  void operator()(Args&&... args) const {
    // Arguments are copied into the launch, as CUDA copies them.
    std::tuple<std::decay_t<P>...> params(std::forward<Args>(args)...);
    const std::function<void()> body = [&] { std::apply(kernel, params); };
    run_grid(grid, blk, body);
  }
};

template <class... P>
Launch<P...> launcher(dim3 grid, dim3 blk, void (*kernel)(P...)) {
  return {kernel, grid, blk};
}

// One exchange through the warp's slots: write, sync, read, sync.
template <class V, class F>
V warp_exchange(V mine, F&& read) {
  static_assert(sizeof(V) <= 8 && std::is_trivially_copyable<V>::value, "warp value");
  uint64_t* slots = block().slots.data() + 32 * (self().idx.x / 32);
  const unsigned lane = self().idx.x % 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &mine, sizeof(V));
  slots[lane] = bits;
  sync_warp(0xffffffffu);
  V out = read(slots, lane);
  sync_warp(0xffffffffu);
  return out;
}

}  // namespace swt_emu

#define SWT_LAUNCH(grid, block, stream, ...) \
  ::swt_emu::launcher(dim3(grid), dim3(block), &__VA_ARGS__)

#define threadIdx (::swt_emu::self().idx)
#define blockIdx (::swt_emu::block().block_idx)
#define blockDim (::swt_emu::block().block_dim)
#define gridDim (::swt_emu::block().grid_dim)

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = swt_emu::last_error();
  swt_emu::last_error() = cudaSuccess;
  return e;
}

inline void __syncthreads() { swt_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { swt_emu::sync_warp(mask); }
inline void __threadfence() {}

template <class V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu || width != 32) swt_emu::fail("emulated CUDA: partial shuffle");
  return swt_emu::warp_exchange(v, [&](const uint64_t* slots, unsigned lane) {
    V r;
    std::memcpy(&r, &slots[(lane ^ static_cast<unsigned>(lane_mask)) & 31u], sizeof(V));
    return r;
  });
}

template <class V>
V __shfl_sync(unsigned mask, V v, int src_lane, int width = 32) {
  if (mask != 0xffffffffu || width != 32) swt_emu::fail("emulated CUDA: partial shuffle");
  return swt_emu::warp_exchange(v, [&](const uint64_t* slots, unsigned) {
    V r;
    std::memcpy(&r, &slots[static_cast<unsigned>(src_lane) & 31u], sizeof(V));
    return r;
  });
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  if (mask != 0xffffffffu) swt_emu::fail("emulated CUDA: partial vote");
  return swt_emu::warp_exchange(predicate != 0 ? 1u : 0u, [](const uint64_t* slots, unsigned) {
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= (slots[l] ? 1u : 0u) << l;
    return bits;
  });
}
inline int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == 0xffffffffu; }
inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0u; }

template <class V>
V atomicAdd(V* address, V value) {
  const V old = *address;
  *address = old + value;
  return old;
}
template <class V>
V atomicMax(V* address, V value) {
  const V old = *address;
  if (value > old) *address = value;
  return old;
}
template <class V>
V atomicExch(V* address, V value) {
  const V old = *address;
  *address = value;
  return old;
}
template <class V>
V atomicCAS(V* address, V compare, V value) {
  const V old = *address;
  if (old == compare) *address = value;
  return old;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline uint4 __ldcs(const uint4* p) { return *p; }
inline void __stcs(uint4* p, uint4 v) { *p = v; }

template <class To, class From>
inline To swt_emu_bits(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}
inline float __int_as_float(int v) { return swt_emu_bits<float>(v); }
inline float __uint_as_float(unsigned v) { return swt_emu_bits<float>(v); }
inline unsigned __float_as_uint(float v) { return swt_emu_bits<unsigned>(v); }
inline double __longlong_as_double(long long v) { return swt_emu_bits<double>(v); }
inline double __hiloint2double(int hi, int lo) {
  const uint64_t bits = (static_cast<uint64_t>(static_cast<uint32_t>(hi)) << 32) |
                        static_cast<uint32_t>(lo);
  return swt_emu_bits<double>(bits);
}
inline int __double2loint(double v) {
  return static_cast<int>(static_cast<uint32_t>(swt_emu_bits<uint64_t>(v)));
}
inline int __double2hiint(double v) {
  return static_cast<int>(static_cast<uint32_t>(swt_emu_bits<uint64_t>(v) >> 32));
}

// --- 16-bit floating point storage types ------------------------------------

struct __half {
  unsigned short bits;
};
struct __nv_bfloat16 {
  unsigned short bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return swt_emu_bits<float>(sign | 0x7f800000u | (mant << 13));
  return swt_emu_bits<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline __half __float2half_rn(float f) {
  const uint32_t x = swt_emu_bits<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  unsigned short h;
  if (ax > 0x7f800000u) {
    h = static_cast<unsigned short>(sign | 0x7e00u);
  } else if (ax >= 0x477ff000u) {  // rounds to infinity (or is infinite)
    h = static_cast<unsigned short>(sign | 0x7c00u);
  } else if (ax < 0x38800000u) {  // below the smallest normal: a multiple of 2^-24
    const float a = swt_emu_bits<float>(ax);
    h = static_cast<unsigned short>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  } else {
    const uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);  // round half to even at bit 13
    h = static_cast<unsigned short>(sign | ((r - 0x38000000u) >> 13));
  }
  return __half{h};
}
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

inline float __bfloat162float(__nv_bfloat16 b) {
  return swt_emu_bits<float>(static_cast<uint32_t>(b.bits) << 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t x = swt_emu_bits<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return __nv_bfloat16{static_cast<unsigned short>((x >> 16) | 0x40u)};
  }
  return __nv_bfloat16{static_cast<unsigned short>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
