// Fused per-instance passes of Representative BatchNorm's channel path, for MindSpore's CPU
// backend (ops.Custom, func_type="aot"). Every tensor is viewed as (rows, cols): one row per
// instance (n, c), the spatial values of that instance in a row. Per-row vectors are (rows,).
//
// With x_hat = (x - mean) * inv_std, the channel path needs only:
//   RbnInstanceMoments  x -> mean, biased var                 (forward, one read)
//   RbnInstanceAffine   x, mean, a, b -> a * (x - mean) + b   (forward, one read + one write)
//   RbnInstanceSums     dy, x, mean -> sum dy, sum dy * (x - mean)
//   RbnInstanceCombine  dy, x, mean, p, q, r -> p * dy + q * (x - mean) + r
// which is BatchNorm's own memory traffic. Sums accumulate in double, and the variance is
// two-pass (the row is in cache for the second pass): never E[x^2] - E[x]^2.
// (x - mean), not x, is what gets scaled: for inputs far from 0 that keeps q * x + r from
// cancelling.

#include <cstdint>
#include <cstring>

namespace {

// Below this many values a pass runs in the calling thread. A small pass takes microseconds, while
// an OpenMP team costs a wake-up per call and its threads then spin, taking the CPU from
// MindSpore's own threads: on a busy 2-core machine a ResNet-20 step at 8x8 (at most 32K values
// a pass) spent ~10 ms in each pass and ran MindSpore's small ops 30x slower. Every row is
// computed by one thread either way, so the results do not depend on it.
constexpr int64_t kParallelValues = int64_t{1} << 18;

template <typename T>
void InstanceMoments(const T *x, T *mean, T *var, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *row = x + i * cols;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) sum += row[j];
    const double row_mean = sum / cols;
    double squares = 0.0;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < cols; ++j) {
      const double centered = row[j] - row_mean;
      squares += centered * centered;
    }
    mean[i] = static_cast<T>(row_mean);
    var[i] = static_cast<T>(squares / cols);
  }
}

template <typename T>
void InstanceAffine(const T *x, const T *mean, const T *a, const T *b, T *y, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *row = x + i * cols;
    T *out = y + i * cols;
    const T m = mean[i], scale = a[i], shift = b[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] = scale * (row[j] - m) + shift;
  }
}

template <typename T>
void InstanceSums(const T *dy, const T *x, const T *mean, T *sum_dy, T *sum_dy_centered, int64_t rows,
                  int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *grad = dy + i * cols;
    const T *row = x + i * cols;
    const double m = mean[i];
    double plain = 0.0, weighted = 0.0;
#pragma omp simd reduction(+ : plain, weighted)
    for (int64_t j = 0; j < cols; ++j) {
      plain += grad[j];
      weighted += grad[j] * (row[j] - m);
    }
    sum_dy[i] = static_cast<T>(plain);
    sum_dy_centered[i] = static_cast<T>(weighted);
  }
}

template <typename T>
void InstanceCombine(const T *dy, const T *x, const T *mean, const T *p, const T *q, const T *r, T *dx,
                     int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *grad = dy + i * cols;
    const T *row = x + i * cols;
    T *out = dx + i * cols;
    const T m = mean[i], dy_scale = p[i], x_scale = q[i], shift = r[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] = dy_scale * grad[j] + x_scale * (row[j] - m) + shift;
  }
}

bool IsDouble(const char *dtype) { return std::strcmp(dtype, "float64") == 0 || std::strcmp(dtype, "double") == 0; }

bool IsFloat(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

// MindSpore's aot calling convention: inputs then outputs in params; the first input is (rows, cols).
// A nonzero return makes MindSpore raise.
template <template <typename> class Kernel>
int Dispatch(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (ndims[0] != 2) return 1;
  const int64_t rows = shapes[0][0], cols = shapes[0][1];
  if (IsFloat(dtypes[0])) return Kernel<float>::Run(params, rows, cols);
  if (IsDouble(dtypes[0])) return Kernel<double>::Run(params, rows, cols);
  return 2;
}

template <typename T>
struct Moments {
  static int Run(void **p, int64_t rows, int64_t cols) {
    InstanceMoments(static_cast<const T *>(p[0]), static_cast<T *>(p[1]), static_cast<T *>(p[2]), rows, cols);
    return 0;
  }
};

template <typename T>
struct Affine {
  static int Run(void **p, int64_t rows, int64_t cols) {
    InstanceAffine(static_cast<const T *>(p[0]), static_cast<const T *>(p[1]), static_cast<const T *>(p[2]),
                   static_cast<const T *>(p[3]), static_cast<T *>(p[4]), rows, cols);
    return 0;
  }
};

template <typename T>
struct Sums {
  static int Run(void **p, int64_t rows, int64_t cols) {
    InstanceSums(static_cast<const T *>(p[0]), static_cast<const T *>(p[1]), static_cast<const T *>(p[2]),
                 static_cast<T *>(p[3]), static_cast<T *>(p[4]), rows, cols);
    return 0;
  }
};

template <typename T>
struct Combine {
  static int Run(void **p, int64_t rows, int64_t cols) {
    InstanceCombine(static_cast<const T *>(p[0]), static_cast<const T *>(p[1]), static_cast<const T *>(p[2]),
                    static_cast<const T *>(p[3]), static_cast<const T *>(p[4]), static_cast<const T *>(p[5]),
                    static_cast<T *>(p[6]), rows, cols);
    return 0;
  }
};

}  // namespace

#define RBN_AOT_KERNEL(name, kernel)                                                                    \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,   \
                      void *stream, void *extra) {                                                     \
    return Dispatch<kernel>(params, ndims, shapes, dtypes);                                             \
  }

RBN_AOT_KERNEL(RbnInstanceMoments, Moments)
RBN_AOT_KERNEL(RbnInstanceAffine, Affine)
RBN_AOT_KERNEL(RbnInstanceSums, Sums)
RBN_AOT_KERNEL(RbnInstanceCombine, Combine)
