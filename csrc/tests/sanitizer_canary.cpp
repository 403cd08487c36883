// Deliberate bugs that the sanitizer builds must catch (proof that a memory error or undefined
// behaviour fails the job). Built and run by ctest only with -DSHALLOWKERN_SANITIZE=...; each run
// is expected to abort (WILL_FAIL), and PASS_REGULAR_EXPRESSION-free: ctest counts the abort.
//   sanitizer_canary heap   one int read past a heap array (ASan: heap-buffer-overflow)
//   sanitizer_canary ubsan  signed 64-bit overflow (UBSan: signed integer overflow)
//   sanitizer_canary none   no bug (must exit 0)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

int main(int argc, char** argv) {
  const char* what = argc > 1 ? argv[1] : "none";
  volatile int64_t past = argc > 2 ? std::atoll(argv[2]) : 4;  // opaque to the optimiser
  if (std::strcmp(what, "heap") == 0) {
    std::vector<int>* v = new std::vector<int>(4, 1);
    const int got = v->data()[past];  // past == 4: one element past the end
    std::printf("read %d\n", got);
    delete v;
  } else if (std::strcmp(what, "ubsan") == 0) {
    volatile int64_t big = std::numeric_limits<int64_t>::max() - 3 + past;  // past >= 4 overflows
    std::printf("sum %lld\n", static_cast<long long>(big + 1));
  }
  return 0;
}
