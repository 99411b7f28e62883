/* Linked into every armv7 artifact (targets/compile.py).
 *
 * LLVM's armv7 hard-float code calls libgcc's int64 <-> float helpers by their GNU names
 * (__floatdisf, ...) and expects the result in a VFP register (s0/d0). libgcc defines those names
 * as aliases of the ARM run-time ABI's __aeabi_l2f, ..., which take and return values in core
 * registers (the base procedure call standard), so the artifact read garbage: the rotary
 * embedding's positions (int64 -> float) came out as ~1e28 under the armv7 device.
 * These definitions, hidden inside the artifact, follow the hard-float convention; gcc compiles
 * each conversion below to the matching __aeabi_ call with the right register moves. */

#ifdef __cplusplus /* TVM links with g++, which compiles a .c file as C++ */
extern "C" {
#endif
#define HIDDEN __attribute__((visibility("hidden")))

HIDDEN float __floatdisf(long long x) { return (float)x; }
HIDDEN float __floatundisf(unsigned long long x) { return (float)x; }
HIDDEN double __floatdidf(long long x) { return (double)x; }
HIDDEN double __floatundidf(unsigned long long x) { return (double)x; }
HIDDEN long long __fixsfdi(float x) { return (long long)x; }
HIDDEN unsigned long long __fixunssfdi(float x) { return (unsigned long long)x; }
HIDDEN long long __fixdfdi(double x) { return (long long)x; }
HIDDEN unsigned long long __fixunsdfdi(double x) { return (unsigned long long)x; }
#ifdef __cplusplus
}
#endif
