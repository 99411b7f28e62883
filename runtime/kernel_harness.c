/* edgeq's kernel harness: runs the kernels of a compiled edgeq artifact on a target that has no
 * TVM runtime (Hexagon under qemu-hexagon, armv7 under qemu-arm), one call at a time, for a host
 * that drives the model's sequence of kernel calls (runtime/kernel_harness.py).
 *
 * Two builds of this one file:
 *  - Hexagon (__hexagon__): freestanding. Debian ships no Hexagon libc, so this file brings its
 *    own _start, raw Linux syscalls (read, write, mmap, clock_gettime, exit), the few C library
 *    functions the kernels call, and the compiler's 64-bit division helpers. It is linked
 *    statically with the artifact's kernel object; the host generates the kernel table
 *    (kernel_table.c: name -> __tvm_ffi_<name>).
 *  - hosted (armv7 Linux with glibc): dlopen()s the artifact's shared library and looks each
 *    kernel up with dlsym().
 * Both provide what a TVM kernel object needs from a TVM runtime: TVMFFIErrorSetRaisedFromCStrParts
 * and the TVMBackend* hooks (parallel launch run sequentially, workspaces from the call's arena).
 *
 * Protocol on stdin/stdout, little-endian, one request at a time:
 *   request:  u32 name_len (0: quit), name, u32 nargs, u64 arena_bytes, then per argument
 *             u32 kind: 0 tensor: u8 code, u8 bits, u16 lanes, u32 ndim, i64 shape[ndim],
 *                                 u64 nbytes, nbytes of data
 *                       1 int: i64      2 float: f64
 *   response: u32 status (0 ok), u64 kernel nanoseconds, then
 *             status != 0: u32 length, message
 *             status == 0: u32 count, per tensor the kernel changed: u32 argument index,
 *                          u64 nbytes, data
 */

#include <stddef.h>
#include <stdint.h>

typedef struct { int32_t device_type, device_id; } DeviceT;
typedef struct { uint8_t code, bits; uint16_t lanes; } DTypeT;
typedef struct {
  void* data;
  DeviceT device;
  int32_t ndim;
  DTypeT dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} TensorT;  /* DLPack's DLTensor */
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } v;
} AnyT;  /* TVM FFI's TVMFFIAny */
typedef int (*KernelFn)(void* self, const AnyT* args, int32_t num_args, AnyT* result);
typedef struct { void* sync_handle; int32_t num_task; } ParallelEnvT;
typedef int (*ParallelLambda)(int task_id, ParallelEnvT* penv, void* cdata);

enum { FFI_NONE = 0, FFI_INT = 1, FFI_FLOAT = 3, FFI_DLTENSOR_PTR = 7 };
enum { ARG_TENSOR = 0, ARG_INT = 1, ARG_FLOAT = 2 };
#define MAX_ARGS 256
#define MAX_NDIM 16
#define ALIGN 128 /* one HVX vector */
#define WORKSPACE_RESERVE (256u << 20)

/* ------------------------------------------------------------------ platform layer */
#if defined(__hexagon__)
#define SYS_read 63
#define SYS_write 64
#define SYS_munmap 215
#define SYS_mmap 222
#define SYS_clock_gettime 113
#define SYS_exit_group 94

static long syscall6(long n, long a, long b, long c, long d, long e, long f) {
  register long r0 __asm__("r0") = a;
  register long r1 __asm__("r1") = b;
  register long r2 __asm__("r2") = c;
  register long r3 __asm__("r3") = d;
  register long r4 __asm__("r4") = e;
  register long r5 __asm__("r5") = f;
  register long r6 __asm__("r6") = n;
  __asm__ volatile("trap0(#1)" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r3), "r"(r4), "r"(r5), "r"(r6) : "memory");
  return r0;
}

static long sys_read(int fd, void* buf, size_t n) { return syscall6(SYS_read, fd, (long)buf, (long)n, 0, 0, 0); }
static long sys_write(int fd, const void* buf, size_t n) { return syscall6(SYS_write, fd, (long)buf, (long)n, 0, 0, 0); }
__attribute__((noreturn)) static void sys_exit(int code) {
  syscall6(SYS_exit_group, code, 0, 0, 0, 0, 0);
  for (;;) {
  }
}
static void* map_pages(size_t n) {
  /* PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE */
  long p = syscall6(SYS_mmap, 0, (long)n, 3, 0x22 | 0x4000, -1, 0);
  return (p < 0 && p > -4096) ? NULL : (void*)p;
}
static void unmap_pages(void* p, size_t n) { syscall6(SYS_munmap, (long)p, (long)n, 0, 0, 0, 0); }
static uint64_t now_ns(void) {
  int32_t ts[2] = {0, 0}; /* 32-bit struct timespec */
  syscall6(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)ts, 0, 0, 0, 0);
  return (uint64_t)(uint32_t)ts[0] * 1000000000ull + (uint32_t)ts[1];
}

/* The C library functions TVM's generated code calls (LLVM lowers large copies and fills, and
 * rounding, to them). */
void* memset(void* dst, int c, size_t n) {
  volatile unsigned char* d = dst; /* volatile: keep LLVM from turning this loop into memset */
  while (n--) *d++ = (unsigned char)c;
  return dst;
}
void* memcpy(void* dst, const void* src, size_t n) {
  volatile unsigned char* d = dst;
  const unsigned char* s = src;
  while (n--) *d++ = *s++;
  return dst;
}
void* memmove(void* dst, const void* src, size_t n) {
  volatile unsigned char* d = dst;
  const unsigned char* s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}
static int memcmp_(const void* a, const void* b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (; n; n--, x++, y++)
    if (*x != *y) return *x < *y ? -1 : 1;
  return 0;
}
static size_t strlen_(const char* s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

/* Round to nearest, ties to even (the default rounding mode): adding and subtracting 2^23
 * leaves the integer part of any |x| < 2^23 rounded by the FPU itself. */
float nearbyintf(float x) {
  union { float f; uint32_t u; } v = {x};
  uint32_t mag = v.u & 0x7fffffffu;
  if (mag >= 0x4b000000u) return x; /* |x| >= 2^23 (or NaN/inf): already an integer */
  volatile float big = 8388608.0f;
  float r = (mag == v.u) ? (x + big) - big : -((-x + big) - big);
  return r == 0.0f ? (mag == v.u ? 0.0f : -0.0f) : r;
}
float roundf(float x) {
  union { float f; uint32_t u; } v = {x};
  float a = (v.u & 0x80000000u) ? -x : x;
  if (a >= 8388608.0f) return x;
  float t = nearbyintf(a);
  if (t - a == 0.5f) t -= 1.0f;          /* a tie went up to even: ties go away from zero */
  if (a - t >= 0.5f) t += 1.0f;          /* nearbyintf rounded a tie down to even */
  return (v.u & 0x80000000u) ? -t : t;
}

float floorf(float x) {
  float t = nearbyintf(x);
  return t > x ? t - 1.0f : t;
}

/* The float math the kernels call (rotary embeddings: sinf, cosf; norms: sqrtf), computed in
 * double and rounded once, so within half an ulp plus double's error of the exact value, as a
 * C library's are. */
static double nearest_int(double x) { /* |x| < 2^51 */
  volatile double big = 6755399441055744.0; /* 1.5 * 2^52 */
  return (x + big) - big;
}

static void sincos_reduced(double r, double* s, double* c) {
  /* |r| <= pi/4: Taylor series to r^17 / r^16 (error < 1e-17); the coefficients are constant
   * expressions (no division at run time: Hexagon has no double divide instruction) */
  double z = r * r;
  *s = r + r * z * (-1.0 / 6 + z * (1.0 / 120 + z * (-1.0 / 5040 + z * (1.0 / 362880 + z * (-1.0 / 39916800 +
       z * (1.0 / 6227020800.0 + z * (-1.0 / 1307674368000.0 + z * (1.0 / 355687428096000.0))))))));
  *c = 1.0 + z * (-1.0 / 2 + z * (1.0 / 24 + z * (-1.0 / 720 + z * (1.0 / 40320 + z * (-1.0 / 3628800 +
       z * (1.0 / 479001600.0 + z * (-1.0 / 87178291200.0 + z * (1.0 / 20922789888000.0))))))));
}

static void sincos_double(float xf, double* s, double* c) {
  double x = xf;
  double k = nearest_int(x * 0.63661977236758134308); /* 2/pi */
  /* pi/2 in three parts, each product with k exact for |k| < 2^20 */
  double r = ((x - k * 1.5707963267341256) - k * 6.0771005065061922e-11) - k * 2.0222662487959506e-21;
  double sr, cr;
  sincos_reduced(r, &sr, &cr);
  switch (((long long)k) & 3) {
    case 0: *s = sr; *c = cr; break;
    case 1: *s = cr; *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
  }
}

static float not_a_number(void) {
  union { uint32_t u; float f; } v = {0x7fc00000u};
  return v.f;
}

float sinf(float x) {
  double s, c;
  if (x != x || x - x != 0.0f) return not_a_number(); /* NaN, +-inf */
  sincos_double(x, &s, &c);
  return (float)s;
}
float cosf(float x) {
  double s, c;
  if (x != x || x - x != 0.0f) return not_a_number();
  sincos_double(x, &s, &c);
  return (float)c;
}

/* sqrt rounded to nearest: an estimate refined in double (no division), then moved to the float
 * whose rounding interval holds the exact root (midpoints squared are exact in double). */
float __hexagon_sqrtf(float x) {
  union { float f; uint32_t u; } v = {x};
  if (x == 0.0f || x != x || v.u == 0x7f800000u) return x;
  if (v.u >> 31) return not_a_number();
  union { double d; uint64_t u; } y = {.u = 0x5fe6eb50c7b537a9ull - (((union { double d; uint64_t u; }){.d = x}).u >> 1)};
  double xd = x, r = y.d;
  for (int i = 0; i < 5; i++) r = r * (1.5 - 0.5 * xd * r * r); /* r -> 1/sqrt(x) */
  float s = (float)(xd * r);
  for (int i = 0; i < 4; i++) {
    union { float f; uint32_t u; } up = {s}, down = {s};
    up.u += 1;
    down.u -= 1;
    double hi = ((double)s + (double)up.f) * 0.5, lo = ((double)s + (double)down.f) * 0.5;
    if (hi * hi <= xd) {
      s = up.f;
    } else if (lo * lo > xd) {
      s = down.f;
    } else {
      break;
    }
  }
  return s;
}
float sqrtf(float x) { return __hexagon_sqrtf(x); }

/* 64-bit integer division for the Hexagon ABI (compiler-rt's names); a shift-subtract loop
 * (the C operators here would call these very functions). */
static uint64_t udivmod64(uint64_t n, uint64_t d, uint64_t* rem) {
  uint64_t q = 0, r = 0;
  if (d == 0) {
    if (rem) *rem = n;
    return ~0ull;
  }
  for (int i = 63; i >= 0; i--) {
    r = (r << 1) | ((n >> i) & 1);
    if (r >= d) {
      r -= d;
      q |= 1ull << i;
    }
  }
  if (rem) *rem = r;
  return q;
}
uint64_t __hexagon_udivdi3(uint64_t n, uint64_t d) { return udivmod64(n, d, 0); }
uint64_t __hexagon_umoddi3(uint64_t n, uint64_t d) {
  uint64_t r;
  udivmod64(n, d, &r);
  return r;
}
int64_t __hexagon_divdi3(int64_t n, int64_t d) {
  int neg = (n < 0) != (d < 0);
  uint64_t q = udivmod64(n < 0 ? -(uint64_t)n : (uint64_t)n, d < 0 ? -(uint64_t)d : (uint64_t)d, 0);
  return neg ? -(int64_t)q : (int64_t)q;
}
int64_t __hexagon_moddi3(int64_t n, int64_t d) {
  uint64_t r;
  udivmod64(n < 0 ? -(uint64_t)n : (uint64_t)n, d < 0 ? -(uint64_t)d : (uint64_t)d, &r);
  return n < 0 ? -(int64_t)r : (int64_t)r;
}

typedef struct { const char* name; KernelFn fn; } KernelEntry;
extern const KernelEntry edgeq_kernels[]; /* kernel_table.c, generated per artifact */
extern const int edgeq_kernel_count;

static KernelFn find_kernel(const char* name, size_t len) {
  for (int i = 0; i < edgeq_kernel_count; i++) {
    const char* k = edgeq_kernels[i].name;
    if (strlen_(k) == len && memcmp_(k, name, len) == 0) return edgeq_kernels[i].fn;
  }
  return NULL;
}
static int open_library(int argc, char** argv) {
  (void)argc;
  (void)argv;
  return 0;
}

#else /* hosted: Linux with a C library */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long sys_read(int fd, void* buf, size_t n) { return read(fd, buf, n); }
static long sys_write(int fd, const void* buf, size_t n) { return write(fd, buf, n); }
__attribute__((noreturn)) static void sys_exit(int code) { _exit(code); }
static void* map_pages(size_t n) {
  void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}
static void unmap_pages(void* p, size_t n) { munmap(p, n); }
static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#define memcmp_ memcmp
#define strlen_ strlen

static void* library;
static int open_library(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s ARTIFACT.so\n", argv[0]);
    return 2;
  }
  library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    fprintf(stderr, "edgeq harness: dlopen failed: %s\n", dlerror());
    return 2;
  }
  return 0;
}
static KernelFn find_kernel(const char* name, size_t len) {
  char symbol[512] = "__tvm_ffi_";
  if (len + 11 > sizeof(symbol)) return NULL;
  memcpy(symbol + 10, name, len);
  symbol[10 + len] = 0;
  return (KernelFn)dlsym(library, symbol);
}
#endif

/* ------------------------------------------------------------------ the TVM runtime's part */
static char error_message[1024];
static size_t error_length;

static void append_error(const char* s) {
  while (s && *s && error_length < sizeof(error_message)) error_message[error_length++] = *s++;
}

__attribute__((visibility("default"))) void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  error_length = 0;
  append_error(kind);
  append_error(": ");
  for (int32_t i = 0; i < n; i++) append_error(parts[i]);
}

static unsigned char* arena;
static size_t arena_size, arena_used;

static void* arena_alloc(uint64_t n) {
  size_t start = (arena_used + ALIGN - 1) & ~(size_t)(ALIGN - 1);
  if (start + n > arena_size) return NULL;
  arena_used = start + (size_t)n;
  return arena + start;
}

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code_hint, int bits_hint) {
  (void)device_type;
  (void)device_id;
  (void)code_hint;
  (void)bits_hint;
  return arena_alloc(nbytes); /* released with the call's arena */
}
static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type;
  (void)device_id;
  (void)ptr;
  return 0;
}
static int parallel_launch(ParallelLambda lambda, void* cdata, int num_task) {
  ParallelEnvT env = {0, num_task > 0 ? num_task : 1};
  for (int i = 0; i < env.num_task; i++) {
    int rc = lambda(i, &env, cdata);
    if (rc != 0) return rc;
  }
  return 0;
}
static int parallel_barrier(int task_id, ParallelEnvT* penv) {
  (void)task_id;
  (void)penv;
  return 0;
}

/* TVM's generated code calls the runtime through these pointers, which its module loader sets.
 * They are weak: an object with no parallel loop or workspace has none of them. */
#if defined(__hexagon__)
extern void* __TVMBackendAllocWorkspace __attribute__((weak));
extern void* __TVMBackendFreeWorkspace __attribute__((weak));
extern void* __TVMBackendParallelLaunch __attribute__((weak));
extern void* __TVMBackendParallelBarrier __attribute__((weak));
static void set_hook(void** slot, void* fn) {
  if (slot) *slot = fn;
}
static void install_hooks(void) {
  set_hook(&__TVMBackendAllocWorkspace, (void*)alloc_workspace);
  set_hook(&__TVMBackendFreeWorkspace, (void*)free_workspace);
  set_hook(&__TVMBackendParallelLaunch, (void*)parallel_launch);
  set_hook(&__TVMBackendParallelBarrier, (void*)parallel_barrier);
}
#else
static void install_hooks(void) {
  static const char* names[] = {"__TVMBackendAllocWorkspace", "__TVMBackendFreeWorkspace", "__TVMBackendParallelLaunch",
                                "__TVMBackendParallelBarrier"};
  void* fns[] = {(void*)alloc_workspace, (void*)free_workspace, (void*)parallel_launch, (void*)parallel_barrier};
  for (int i = 0; i < 4; i++) {
    void** slot = (void**)dlsym(library, names[i]);
    if (slot) *slot = fns[i];
  }
}
#endif

/* ------------------------------------------------------------------ the protocol */
static int read_exact(void* buf, uint64_t n) {
  unsigned char* p = buf;
  while (n) {
    long got = sys_read(0, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
    if (got <= 0) return -1;
    p += got;
    n -= (uint64_t)got;
  }
  return 0;
}
static void write_exact(const void* buf, uint64_t n) {
  const unsigned char* p = buf;
  while (n) {
    long put = sys_write(1, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
    if (put <= 0) sys_exit(3);
    p += put;
    n -= (uint64_t)put;
  }
}
static void put_u32(uint32_t v) { write_exact(&v, 4); }
static void put_u64(uint64_t v) { write_exact(&v, 8); }

static void reply_error(const char* what, uint64_t ns) {
  put_u32(1);
  put_u64(ns);
  put_u32((uint32_t)strlen_(what));
  write_exact(what, strlen_(what));
}

static TensorT tensors[MAX_ARGS];
static int64_t shapes[MAX_ARGS][MAX_NDIM];
static void* pristine[MAX_ARGS];
static uint64_t sizes[MAX_ARGS];
static AnyT args[MAX_ARGS];
static char name[512];

/* One request; returns 0 to go on, 1 to quit. */
static int serve_one(void) {
  uint32_t name_len, nargs;
  uint64_t arena_bytes;
  if (read_exact(&name_len, 4) != 0 || name_len == 0) return 1;
  if (name_len >= sizeof(name) || read_exact(name, name_len) != 0) sys_exit(4);
  name[name_len] = 0;
  if (read_exact(&nargs, 4) != 0 || nargs > MAX_ARGS || read_exact(&arena_bytes, 8) != 0) sys_exit(4);
  arena_size = (size_t)arena_bytes + WORKSPACE_RESERVE;
  arena_used = 0;
  arena = map_pages(arena_size);
  if (!arena) sys_exit(5);
  for (uint32_t i = 0; i < nargs; i++) {
    uint32_t kind;
    read_exact(&kind, 4);
    sizes[i] = 0;
    if (kind == ARG_TENSOR) {
      TensorT* t = &tensors[i];
      uint64_t nbytes;
      read_exact(&t->dtype, 4);
      read_exact(&t->ndim, 4);
      if (t->ndim > MAX_NDIM) sys_exit(4);
      read_exact(shapes[i], 8 * (uint64_t)t->ndim);
      read_exact(&nbytes, 8);
      t->data = arena_alloc(nbytes ? nbytes : 1);
      pristine[i] = arena_alloc(nbytes ? nbytes : 1);
      if (!t->data || !pristine[i]) sys_exit(5);
      read_exact(t->data, nbytes);
      memcpy(pristine[i], t->data, (size_t)nbytes);
      t->device.device_type = 1; /* kDLCPU: the kernels were built for a CPU-kind LLVM target */
      t->device.device_id = 0;
      t->shape = shapes[i];
      t->strides = NULL;
      t->byte_offset = 0;
      sizes[i] = nbytes;
      args[i].type_index = FFI_DLTENSOR_PTR;
      args[i].zero_padding = 0;
      args[i].v.v_ptr = t;
    } else if (kind == ARG_INT) {
      args[i].type_index = FFI_INT;
      args[i].zero_padding = 0;
      read_exact(&args[i].v.v_int64, 8);
    } else if (kind == ARG_FLOAT) {
      args[i].type_index = FFI_FLOAT;
      args[i].zero_padding = 0;
      read_exact(&args[i].v.v_float64, 8);
    } else {
      sys_exit(4);
    }
  }
  KernelFn fn = find_kernel(name, name_len);
  if (!fn) {
    reply_error("no such kernel in the artifact", 0);
    unmap_pages(arena, arena_size);
    return 0;
  }
  AnyT result;
  result.type_index = FFI_NONE;
  result.zero_padding = 0;
  result.v.v_int64 = 0;
  error_length = 0;
  uint64_t start = now_ns();
  int rc = fn(NULL, args, (int32_t)nargs, &result);
  uint64_t ns = now_ns() - start;
  if (rc != 0) {
    if (error_length == 0) append_error("the kernel failed without a message");
    error_message[error_length < sizeof(error_message) ? error_length : sizeof(error_message) - 1] = 0;
    reply_error(error_message, ns);
  } else {
    uint32_t changed = 0;
    for (uint32_t i = 0; i < nargs; i++)
      if (sizes[i] && memcmp_(pristine[i], tensors[i].data, (size_t)sizes[i]) != 0) changed++;
    put_u32(0);
    put_u64(ns);
    put_u32(changed);
    for (uint32_t i = 0; i < nargs; i++) {
      if (sizes[i] && memcmp_(pristine[i], tensors[i].data, (size_t)sizes[i]) != 0) {
        put_u32(i);
        put_u64(sizes[i]);
        write_exact(tensors[i].data, sizes[i]);
      }
    }
  }
  unmap_pages(arena, arena_size);
  return 0;
}

static int serve(int argc, char** argv) {
  int rc = open_library(argc, argv);
  if (rc) return rc;
  install_hooks();
  put_u32(0x4b514445u); /* "EDQK": ready */
  while (serve_one() == 0) {
  }
  return 0;
}

#if defined(__hexagon__)
void _start(void) { sys_exit(serve(0, 0)); }
#else
int main(int argc, char** argv) { return serve(argc, argv); }
#endif
