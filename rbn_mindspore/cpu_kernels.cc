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
//
// RbnLayerForward_* and RbnLayerBackward_* are the whole layer of one process in one call each
// way, on x viewed as (N, C, S): the passes above with the (N, C) algebra between them in double
// (the centering calibration, the batch or running moments, the scaling gate, A and B, and their
// backward: the formulas of rbn_jittor/kernels.py's sources). One call each way is what keeps
// MindSpore's compiled graph, and its peak memory, near BatchNorm's size. One symbol per choice
// of statistics (template arguments).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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

// V: the type of the per-row coefficients (T for the pass kernels, double for the layer's).
template <typename T, typename V>
void InstanceAffine(const T *x, const T *mean, const V *a, const V *b, T *y, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *row = x + i * cols;
    T *out = y + i * cols;
    const T m = mean[i], scale = static_cast<T>(a[i]), shift = static_cast<T>(b[i]);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] = scale * (row[j] - m) + shift;
  }
}

template <typename T, typename V>
void InstanceSums(const T *dy, const T *x, const T *mean, V *sum_dy, V *sum_dy_centered, int64_t rows,
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
    sum_dy[i] = static_cast<V>(plain);
    sum_dy_centered[i] = static_cast<V>(weighted);
  }
}

template <typename T, typename V>
void InstanceCombine(const T *dy, const T *x, const T *mean, const V *p, const V *q, const V *r, T *dx,
                     int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelValues)
  for (int64_t i = 0; i < rows; ++i) {
    const T *grad = dy + i * cols;
    const T *row = x + i * cols;
    T *out = dx + i * cols;
    const T m = mean[i], dy_scale = static_cast<T>(p[i]), x_scale = static_cast<T>(q[i]), shift = static_cast<T>(r[i]);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) out[j] = dy_scale * grad[j] + x_scale * (row[j] - m) + shift;
  }
}

// ------------------------------------------------------------------ the whole layer of one process

enum Statistic { kNone, kMean, kStd };  // a calibration's K: off, mu_c, sigma_c

// One call's sizes, (C,) vectors (in the inputs' order after x, or x and dy) and epsilon.
template <typename T>
struct LayerArgs {
  LayerArgs(void **p, int64_t n, int64_t channels)
      : n(n), channels(channels), weight(static_cast<const T *>(p[0])), bias(static_cast<const T *>(p[1])),
        center_weight(static_cast<const T *>(p[2])), scale_weight(static_cast<const T *>(p[3])),
        scale_bias(static_cast<const T *>(p[4])), running_mean(static_cast<const T *>(p[5])),
        running_var(static_cast<const T *>(p[6])), eps(*static_cast<const T *>(p[7])) {}
  int64_t n, channels;
  const T *weight, *bias, *center_weight, *scale_weight, *scale_bias, *running_mean, *running_var;
  double eps;
};

// Channel c's part of Eq. 12's (N, C) algebra in double, from the instance moments of x (row
// i * C + c for instance i): X_cm's instance means, the batch (or running) moments, the scaling
// gate and Y = A * (X - mean) + B. The same formulas as rbn_jittor/kernels.py's sources.
template <typename T, Statistic kCentering, Statistic kScaling, bool kBatch>
struct ChannelAlgebra {
  ChannelAlgebra(const LayerArgs<T> &args, const T *mean, const T *var, int64_t c)
      : n(args.n), channels(args.channels), c(c), mean(mean), var(var), eps(args.eps), w_m(args.center_weight[c]),
        w_v(args.scale_weight[c]), w_b(args.scale_bias[c]), gamma(args.weight[c]) {
    if (kBatch) {
      // Law of total variance: each instance adds its variance and its mean's spread. Second pass
      // around the first mean, plus what rounding left of that mean.
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) sum += MeanCm(i);
      const double first = sum / n;
      double residual = 0.0, spread = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double d = MeanCm(i) - first;
        residual += d;
        spread += var[Row(i)] + d * d;
      }
      residual /= n;
      batch_mean = first + residual;
      batch_var = spread / n - residual * residual;
    } else {
      batch_mean = args.running_mean[c];
      batch_var = args.running_var[c];
    }
    inv_std = 1.0 / std::sqrt(batch_var + eps);
  }

  int64_t Row(int64_t i) const { return i * channels + c; }
  double CenterStatistic(int64_t i) const {
    return kCentering == kMean ? mean[Row(i)] : std::sqrt(var[Row(i)] + eps);
  }
  double MeanCm(int64_t i) const { return mean[Row(i)] + w_m * CenterStatistic(i); }
  double Normalized(int64_t i) const { return (MeanCm(i) - batch_mean) * inv_std; }  // X_s's instance mean
  // K_s of X_s, whose instance variance is var * inv_std^2.
  double ScaleStatistic(int64_t i, double normalized) const {
    return kScaling == kMean ? normalized : std::sqrt(var[Row(i)] * inv_std * inv_std + eps);
  }
  double Gate(double statistic) const {
    return kScaling == kNone ? 1.0 : 1.0 / (1.0 + std::exp(-(w_v * statistic + w_b)));
  }

  int64_t n, channels, c;
  const T *mean, *var;
  double eps, w_m, w_v, w_b, gamma, batch_mean, batch_var, inv_std;
};

// LayerDispatch's kernels: x (or x and dy) is (N, C, S).
template <Statistic kCentering, Statistic kScaling, bool kBatch>
struct Layer {
  template <typename T>
  using Algebra = ChannelAlgebra<T, kCentering, kScaling, kBatch>;

  // Inputs x, the seven vectors, eps (1,); outputs y, the instance mean and biased variance (N * C,)
  // (for the backward), the batch (or running) mean and biased variance (C,). All in x's dtype:
  // MindSpore's mixed precision casts every float input of an op in a float32 Cell to float32.
  template <typename T>
  struct Forward {
    static int Run(void **p, int64_t n, int64_t channels, int64_t s) {
      const LayerArgs<T> args(p + 1, n, channels);
      const T *x = static_cast<const T *>(p[0]);
      T *y = static_cast<T *>(p[9]), *mean = static_cast<T *>(p[10]), *var = static_cast<T *>(p[11]),
        *batch_mean = static_cast<T *>(p[12]), *batch_var = static_cast<T *>(p[13]);
      const int64_t rows = n * channels;
      InstanceMoments(x, mean, var, rows, s);
      std::vector<double> a(rows), b(rows);
      for (int64_t c = 0; c < channels; ++c) {
        const Algebra<T> channel(args, mean, var, c);
        batch_mean[c] = static_cast<T>(channel.batch_mean);
        batch_var[c] = static_cast<T>(channel.batch_var);
        for (int64_t i = 0; i < n; ++i) {
          const double normalized = channel.Normalized(i);
          const double scale = channel.gamma * channel.Gate(channel.ScaleStatistic(i, normalized));
          a[channel.Row(i)] = scale * channel.inv_std;
          b[channel.Row(i)] = scale * normalized + args.bias[c];
        }
      }
      InstanceAffine(x, mean, a.data(), b.data(), y, rows, s);
      return 0;
    }
  };

  // Inputs x, dy, the forward's instance mean and variance, the seven vectors, eps; outputs dx and
  // the gradients of the seven vectors (the running statistics' are 0 with batch statistics).
  // dX = A * dY + q * (X - mean) + r per instance, with q, r from the algebra's backward.
  template <typename T>
  struct Backward {
    static int Run(void **p, int64_t n, int64_t channels, int64_t s) {
      const LayerArgs<T> args(p + 4, n, channels);
      const T *x = static_cast<const T *>(p[0]), *dy = static_cast<const T *>(p[1]),
              *mean = static_cast<const T *>(p[2]), *var = static_cast<const T *>(p[3]);
      T *dx = static_cast<T *>(p[12]);
      T *grad_weight = static_cast<T *>(p[13]), *grad_bias = static_cast<T *>(p[14]),
        *grad_center_weight = static_cast<T *>(p[15]), *grad_scale_weight = static_cast<T *>(p[16]),
        *grad_scale_bias = static_cast<T *>(p[17]), *grad_running_mean = static_cast<T *>(p[18]),
        *grad_running_var = static_cast<T *>(p[19]);
      const int64_t rows = n * channels;
      // The gradients of B and A: sum dY and sum dY * (X - mean) per instance.
      std::vector<double> sum_dy(rows), sum_dy_centered(rows), p_dy(rows), q_x(rows), r(rows), grad_mean_cm(n),
          grad_var(n);
      InstanceSums(dy, x, mean, sum_dy.data(), sum_dy_centered.data(), rows, s);
      for (int64_t c = 0; c < channels; ++c) {
        const Algebra<T> channel(args, mean, var, c);
        const double inv_std = channel.inv_std, gamma = channel.gamma;
        double sum_inv_std = 0.0, sum_centre = 0.0, sum_weight = 0.0, sum_bias = 0.0, sum_scale_weight = 0.0,
               sum_scale_bias = 0.0, sum_center_weight = 0.0;
        // A = inv_std * gate * gamma, B = normalized * gate * gamma + beta
        for (int64_t i = 0; i < n; ++i) {
          const int64_t row = channel.Row(i);
          const double normalized = channel.Normalized(i), statistic = channel.ScaleStatistic(i, normalized),
                       gate = channel.Gate(statistic);
          double d_scale = sum_dy_centered[row], d_shift = sum_dy[row], d_var = 0.0;
          sum_bias += d_shift;
          sum_weight += (d_scale * inv_std + d_shift * normalized) * gate;
          d_scale *= gamma;
          d_shift *= gamma;
          const double grad_logit = (d_scale * inv_std + d_shift * normalized) * gate * (1.0 - gate);
          d_scale *= gate;
          d_shift *= gate;
          if (kScaling != kNone) {
            sum_scale_bias += grad_logit;
            sum_scale_weight += grad_logit * statistic;
          }
          if (kScaling == kMean) d_shift += grad_logit * channel.w_v;
          if (kScaling == kStd) {
            // statistic = sqrt(var inv_std^2 + eps):
            // d/dvar = inv_std^2 / (2 statistic), d/dinv_std = var inv_std / statistic
            const double grad_root = grad_logit * channel.w_v * inv_std / statistic;
            d_var = grad_root * 0.5 * inv_std;
            d_scale += grad_root * var[row];
          }
          sum_inv_std += d_scale + d_shift * (channel.MeanCm(i) - channel.batch_mean);
          grad_mean_cm[i] = d_shift * inv_std;
          grad_var[i] = d_var;
          sum_centre -= d_shift * inv_std;
          p_dy[row] = inv_std * gate * gamma;  // A
        }
        const double grad_batch_mean = sum_centre, grad_batch_var = -0.5 * sum_inv_std * inv_std * inv_std * inv_std;
        const double var_share = kBatch ? grad_batch_var / n : 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t row = channel.Row(i);
          double grad = grad_mean_cm[i], d_var = grad_var[i] + var_share;
          // batch_var's own term in batch_mean, -2 mean_n(mean_cm - batch_mean), is 0
          if (kBatch) grad += grad_batch_mean / n + 2.0 * var_share * (channel.MeanCm(i) - channel.batch_mean);
          const double center = channel.CenterStatistic(i);
          sum_center_weight += grad * center;
          double d_mean = grad;
          if (kCentering == kMean) d_mean += grad * channel.w_m;
          if (kCentering == kStd) d_var += grad * channel.w_m * 0.5 / center;
          q_x[row] = 2.0 * d_var / s;
          r[row] = (d_mean - p_dy[row] * sum_dy[row]) / s;
        }
        grad_weight[c] = static_cast<T>(sum_weight);
        grad_bias[c] = static_cast<T>(sum_bias);
        grad_center_weight[c] = static_cast<T>(sum_center_weight);
        grad_scale_weight[c] = static_cast<T>(sum_scale_weight);
        grad_scale_bias[c] = static_cast<T>(sum_scale_bias);
        grad_running_mean[c] = static_cast<T>(kBatch ? 0.0 : grad_batch_mean);
        grad_running_var[c] = static_cast<T>(kBatch ? 0.0 : grad_batch_var);
      }
      InstanceCombine(dy, x, mean, p_dy.data(), q_x.data(), r.data(), dx, rows, s);
      return 0;
    }
  };
};

bool IsDouble(const char *dtype) { return std::strcmp(dtype, "float64") == 0 || std::strcmp(dtype, "double") == 0; }

bool IsFloat(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

// MindSpore's aot calling convention: inputs then outputs in params; the first input is (rows, cols)
// (Dispatch) or (N, C, S) (LayerDispatch). A nonzero return makes MindSpore raise.
template <template <typename> class Kernel>
int Dispatch(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (ndims[0] != 2) return 1;
  const int64_t rows = shapes[0][0], cols = shapes[0][1];
  if (IsFloat(dtypes[0])) return Kernel<float>::Run(params, rows, cols);
  if (IsDouble(dtypes[0])) return Kernel<double>::Run(params, rows, cols);
  return 2;
}

template <template <typename> class Kernel>
int LayerDispatch(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  if (ndims[0] != 3) return 1;
  const int64_t n = shapes[0][0], channels = shapes[0][1], s = shapes[0][2];
  if (IsFloat(dtypes[0])) return Kernel<float>::Run(params, n, channels, s);
  if (IsDouble(dtypes[0])) return Kernel<double>::Run(params, n, channels, s);
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

#define RBN_AOT_KERNEL(name, dispatch)                                                                  \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,   \
                      void *stream, void *extra) {                                                     \
    return dispatch(params, ndims, shapes, dtypes);                                                     \
  }

RBN_AOT_KERNEL(RbnInstanceMoments, Dispatch<Moments>)
RBN_AOT_KERNEL(RbnInstanceAffine, Dispatch<Affine>)
RBN_AOT_KERNEL(RbnInstanceSums, Dispatch<Sums>)
RBN_AOT_KERNEL(RbnInstanceCombine, Dispatch<Combine>)

// RbnLayerForward_<centering>_<scaling>_<statistics>, RbnLayerBackward_...: see cpu_kernels.py.
#define RBN_LAYER_KERNELS(suffix, centering, scaling, batch)                        \
  using Layer_##suffix = Layer<centering, scaling, batch>;                         \
  RBN_AOT_KERNEL(RbnLayerForward_##suffix, LayerDispatch<Layer_##suffix::Forward>) \
  RBN_AOT_KERNEL(RbnLayerBackward_##suffix, LayerDispatch<Layer_##suffix::Backward>)

// The six choices of statistics, for batch or running statistics.
#define RBN_LAYER_KERNEL_SET(statistics, batch)                         \
  RBN_LAYER_KERNELS(mu_c_none_##statistics, kMean, kNone, batch)        \
  RBN_LAYER_KERNELS(mu_c_mu_c_##statistics, kMean, kMean, batch)        \
  RBN_LAYER_KERNELS(mu_c_sigma_c_##statistics, kMean, kStd, batch)      \
  RBN_LAYER_KERNELS(sigma_c_none_##statistics, kStd, kNone, batch)      \
  RBN_LAYER_KERNELS(sigma_c_mu_c_##statistics, kStd, kMean, batch)      \
  RBN_LAYER_KERNELS(sigma_c_sigma_c_##statistics, kStd, kStd, batch)

RBN_LAYER_KERNEL_SET(batch, true)
RBN_LAYER_KERNEL_SET(running, false)
