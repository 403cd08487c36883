// See include/shallowkern/knobs.h.
#include "shallowkern/knobs.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>

namespace shallowkern {
namespace knobs {
namespace {

constexpr int64_t kDefaultPartialsMB = 2048;

bool parse_bool(const std::string& env, const std::string& v, bool dflt) {
  if (v.empty()) return dflt;
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw std::invalid_argument(env + "=" + v + ": expected 0/1, true/false, yes/no or on/off");
}

CpuForward parse_forward(const std::string& env, const std::string& v) {
  if (v.empty()) return CpuForward::kAuto;
  if (v == "direct") return CpuForward::kDirect;
  if (v == "fused") return CpuForward::kFused;
  if (v == "vendor") return CpuForward::kVendor;
  throw std::invalid_argument(env + "=" + v + ": expected direct, fused or vendor");
}

CpuConvLayout parse_layout(const std::string& env, const std::string& v) {
  if (v.empty()) return CpuConvLayout::kAuto;
  if (v == "channels_last") return CpuConvLayout::kChannelsLast;
  if (v == "planar") return CpuConvLayout::kPlanar;
  throw std::invalid_argument(env + "=" + v + ": expected channels_last or planar");
}

CpuBackward parse_backward(const std::string& env, const std::string& v) {
  if (v.empty()) return CpuBackward::kAuto;
  if (v == "fused") return CpuBackward::kFused;
  if (v == "vendor") return CpuBackward::kVendor;
  throw std::invalid_argument(env + "=" + v + ": expected fused or vendor");
}

int64_t parse_mb(const std::string& env, const std::string& v) {
  if (v.empty()) return kDefaultPartialsMB;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(v.c_str(), &end, 10);
  if (errno != 0 || end == v.c_str() || *end != '\0' || mb < 0 || mb > (int64_t(1) << 40))
    throw std::invalid_argument(env + "=" + v + ": expected a number of MiB in [0, 2^40]");
  return mb;
}

std::string env_text(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

struct State {
  std::atomic<int> forward, layout, backward;
  std::atomic<bool> sparse_backward, avx512, huge_pages;
  std::atomic<int64_t> partials_mb;
  std::string kt;  // the CUDA planner's, read once by it; kept to accept a no-op set_knob
  // A malformed variable must not abort the process from a static initialiser: it falls back to
  // the default (Python's registry reports it when it reads the same variable).
  State() {
    auto or_default = [](auto parse, auto dflt) {
      try {
        return parse();
      } catch (const std::invalid_argument&) {
        return dflt;
      }
    };
    forward = static_cast<int>(or_default(
        [] { return parse_forward("SHALLOWKERN_CPU_FORWARD", env_text("SHALLOWKERN_CPU_FORWARD")); },
        CpuForward::kAuto));
    layout = static_cast<int>(or_default(
        [] {
          return parse_layout("SHALLOWKERN_CPU_CONV_LAYOUT",
                              env_text("SHALLOWKERN_CPU_CONV_LAYOUT"));
        },
        CpuConvLayout::kAuto));
    backward = static_cast<int>(or_default(
        [] {
          return parse_backward("SHALLOWKERN_CPU_BACKWARD", env_text("SHALLOWKERN_CPU_BACKWARD"));
        },
        CpuBackward::kAuto));
    sparse_backward = or_default(
        [] {
          return parse_bool("SHALLOWKERN_CPU_SPARSE_BACKWARD",
                            env_text("SHALLOWKERN_CPU_SPARSE_BACKWARD"), true);
        },
        true);
    avx512 = or_default(
        [] { return parse_bool("SHALLOWKERN_CPU_AVX512", env_text("SHALLOWKERN_CPU_AVX512"), true); },
        true);
    huge_pages = or_default(
        [] {
          return parse_bool("SHALLOWKERN_CPU_HUGE_PAGES", env_text("SHALLOWKERN_CPU_HUGE_PAGES"),
                            true);
        },
        true);
    partials_mb = or_default(
        [] {
          return parse_mb("SHALLOWKERN_CPU_PARTIALS_MB", env_text("SHALLOWKERN_CPU_PARTIALS_MB"));
        },
        kDefaultPartialsMB);
    kt = env_text("SHALLOWKERN_WC2D_KT");
  }
};

State& state() {
  static State s;  // the environment is read here, once
  return s;
}

}  // namespace

CpuForward cpu_forward() {
  return static_cast<CpuForward>(state().forward.load(std::memory_order_relaxed));
}
CpuConvLayout cpu_conv_layout() {
  return static_cast<CpuConvLayout>(state().layout.load(std::memory_order_relaxed));
}
CpuBackward cpu_backward() {
  return static_cast<CpuBackward>(state().backward.load(std::memory_order_relaxed));
}
bool cpu_sparse_backward() { return state().sparse_backward.load(std::memory_order_relaxed); }
bool cpu_avx512() { return state().avx512.load(std::memory_order_relaxed); }
bool cpu_huge_pages() { return state().huge_pages.load(std::memory_order_relaxed); }
int64_t cpu_partials_bytes() {
  return state().partials_mb.load(std::memory_order_relaxed) << 20;
}

void set_knob(const std::string& env, const std::string& value) {
  State& s = state();
  if (env == "SHALLOWKERN_CPU_FORWARD") {
    s.forward = static_cast<int>(parse_forward(env, value));
  } else if (env == "SHALLOWKERN_CPU_CONV_LAYOUT") {
    s.layout = static_cast<int>(parse_layout(env, value));
  } else if (env == "SHALLOWKERN_CPU_BACKWARD") {
    s.backward = static_cast<int>(parse_backward(env, value));
  } else if (env == "SHALLOWKERN_CPU_SPARSE_BACKWARD") {
    s.sparse_backward = parse_bool(env, value, true);
  } else if (env == "SHALLOWKERN_CPU_AVX512") {
    s.avx512 = parse_bool(env, value, true);
  } else if (env == "SHALLOWKERN_CPU_PARTIALS_MB") {
    s.partials_mb = parse_mb(env, value);
  } else if (env == "SHALLOWKERN_CPU_HUGE_PAGES") {
    s.huge_pages = parse_bool(env, value, true);
  } else if (env == "SHALLOWKERN_WC2D_KT") {
    // The CUDA kernel's plans are cached per shape with the blocking read at the first launch.
    if (value != s.kt && !(value.empty() && s.kt.empty()))
      throw std::invalid_argument(
          "SHALLOWKERN_WC2D_KT is read once per process by the CUDA planner: set it in the "
          "environment before the first launch");
  } else {
    throw std::invalid_argument("unknown C++ knob " + env +
                                " (known: SHALLOWKERN_CPU_FORWARD, SHALLOWKERN_CPU_CONV_LAYOUT, "
                                "SHALLOWKERN_CPU_BACKWARD, "
                                "SHALLOWKERN_CPU_SPARSE_BACKWARD, "
                                "SHALLOWKERN_CPU_AVX512, SHALLOWKERN_CPU_PARTIALS_MB, "
                                "SHALLOWKERN_CPU_HUGE_PAGES, SHALLOWKERN_WC2D_KT)");
  }
}

std::string get_knob(const std::string& env) {
  State& s = state();
  if (env == "SHALLOWKERN_CPU_FORWARD") {
    switch (static_cast<CpuForward>(s.forward.load())) {
      case CpuForward::kDirect: return "direct";
      case CpuForward::kFused: return "fused";
      case CpuForward::kVendor: return "vendor";
      default: return "";
    }
  }
  if (env == "SHALLOWKERN_CPU_CONV_LAYOUT") {
    switch (static_cast<CpuConvLayout>(s.layout.load())) {
      case CpuConvLayout::kChannelsLast: return "channels_last";
      case CpuConvLayout::kPlanar: return "planar";
      default: return "";
    }
  }
  if (env == "SHALLOWKERN_CPU_BACKWARD") {
    switch (static_cast<CpuBackward>(s.backward.load())) {
      case CpuBackward::kFused: return "fused";
      case CpuBackward::kVendor: return "vendor";
      default: return "";
    }
  }
  if (env == "SHALLOWKERN_CPU_SPARSE_BACKWARD") return s.sparse_backward ? "1" : "0";
  if (env == "SHALLOWKERN_CPU_AVX512") return s.avx512 ? "1" : "0";
  if (env == "SHALLOWKERN_CPU_PARTIALS_MB") return std::to_string(s.partials_mb.load());
  if (env == "SHALLOWKERN_CPU_HUGE_PAGES") return s.huge_pages ? "1" : "0";
  if (env == "SHALLOWKERN_WC2D_KT") return s.kt;
  throw std::invalid_argument("unknown C++ knob " + env);
}

}  // namespace knobs
}  // namespace shallowkern
