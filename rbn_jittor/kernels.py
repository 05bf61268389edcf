"""The channel path as ``jt.code`` kernels: two passes over ``x`` and the (N, C) algebra between.

Written as many small Jittor ops, the channel path fused into kernels that varied with the
options, the dtypes and what was alive at sync time, so a cold cache compiled hundreds of them
(issue 12). A ``jt.code`` kernel is one op whose source does not change: Jittor compiles it once
per source and input dtype and reuses it for every shape (the sizes are run-time values). On
``x`` viewed as (N, C, L), with ``Y = A * (X - mean) + B`` per (n, c) instance
(``rbn_jittor.functional``):

- :class:`InstanceMoments`: the per-(n, c) mean and biased variance, two-pass with float64 sums;
  its backward is one elementwise pass.
- :class:`BatchMoments`: the centering calibration and the batch moments, per channel.
- :class:`Coefficients`: ``A`` and ``B`` per (n, c) from the batch (or running) statistics, the
  scaling calibration and the affine parameters. Its source, and :class:`BatchMoments`', is
  written for the options in use (a statistic or none, affine or not): a few variants in all.
- :class:`InstanceAffine`: ``Y`` from ``A``, ``B``, ``mean``; its backward is one pass that
  writes ``dX = A * dY`` and sums ``dY`` and ``dY * (X - mean)`` per instance.

The per-(n, c) and per-channel arithmetic is float64; the elementwise arithmetic over ``x`` is in
the input's dtype, as in ``rbn_mindspore/cpu_kernels.cc``. The CUDA sources run one thread per
instance or channel (simple, not tuned; untested here: this machine has no GPU).
"""

import functools

import jittor as jt


def _sources(aliases, body, over="instance"):
    """``jt.code`` sources running ``body`` once per (n, c) instance (``over="instance"``) or once
    per channel c (``over="channel"``): a loop on the CPU, a thread on CUDA. The first alias is an
    (N, C, ...) input, whose sizes set the loop."""
    first = next(iter(aliases))
    count, index = {
        "instance": (f"{first}_shape0 * {first}_shape1",
                     f"const int64 n = i / {first}_shape1, c = i % {first}_shape1;"),
        "channel": (f"{first}_shape1", "const int64 c = i;"),
    }[over]
    aliases = "\n".join(f"@alias({name}, {arg})" for name, arg in aliases.items())
    cpu = f"""{aliases}
for (int64 i = 0; i < {count}; i++) {{ {index} {body} }}
"""
    cuda = f"""
__global__ static void rbn_kernel(@ARGS_DEF) {{
    @PRECALC
    {aliases}
    const int64 i = blockIdx.x * (int64)blockDim.x + threadIdx.x;
    if (i >= {count}) return;
    {index}
    {body}
}}
{aliases}
rbn_kernel<<<({count} - 1) / 256 + 1, 256>>>(@ARGS);
"""
    return dict(cpu_src=cpu, cuda_src=cuda)


_MOMENTS = _sources(dict(x="in0", mean="out0", var="out1"), """
    float64 sum = 0;
    for (int64 l = 0; l < x_shape2; l++) sum += (float64)@x(n, c, l);
    const float64 first = sum / x_shape2;
    // second pass: the variance around the first mean, and what rounding left of that mean
    float64 residual = 0, squares = 0;
    for (int64 l = 0; l < x_shape2; l++) {
        const float64 d = (float64)@x(n, c, l) - first;
        residual += d;
        squares += d * d;
    }
    residual /= x_shape2;
    @mean(n, c) = first + residual;
    @var(n, c) = squares / x_shape2 - residual * residual;
""")

_MOMENTS_GRAD = _sources(dict(x="in0", mean="in1", dmean="in2", dvar="in3", dx="out0"), """
    const float64 m = @mean(n, c), p = @dmean(n, c) / x_shape2, q = 2 * @dvar(n, c) / x_shape2;
    for (int64 l = 0; l < x_shape2; l++) @dx(n, c, l) = (x_type)(p + q * ((float64)@x(n, c, l) - m));
""")

# In the input's dtype: subtract the rounded mean, and fold A * (what rounding left of it) into B.
_AFFINE = _sources(dict(x="in0", mean="in1", a="in2", b="in3", y="out0"), """
    const x_type m = (x_type)@mean(n, c), scale = (x_type)@a(n, c);
    const x_type shift = (x_type)(@b(n, c) - @a(n, c) * (@mean(n, c) - (float64)m));
    for (int64 l = 0; l < x_shape2; l++) @y(n, c, l) = (@x(n, c, l) - m) * scale + shift;
""")

_AFFINE_GRAD = _sources(dict(x="in0", mean="in1", a="in2", dy="in3", dx="out0", dmean="out1", da="out2",
                             db="out3"), """
    const float64 m = @mean(n, c);
    const x_type scale = (x_type)@a(n, c);
    float64 sum = 0, centered = 0;
    for (int64 l = 0; l < x_shape2; l++) {
        const x_type g = @dy(n, c, l);
        @dx(n, c, l) = g * scale;
        sum += (float64)g;
        centered += (float64)g * ((float64)@x(n, c, l) - m);
    }
    @db(n, c) = sum;
    @da(n, c) = centered;
    @dmean(n, c) = -@a(n, c) * sum;
""")


class InstanceMoments(jt.Function):
    """Per-(n, c) mean and biased variance of ``x`` (N, C, L), both (N, C) float64."""

    def execute(self, x):
        n, c = x.shape[:2]
        self.x = x
        self.mean, var = jt.code([(n, c), (n, c)], ["float64", "float64"], [x], **_MOMENTS)
        return self.mean, var

    def grad(self, dmean, dvar):
        # an unused output has no gradient; zeros keep the kernel's inputs fixed
        dmean = jt.zeros_like(self.mean) if dmean is None else dmean
        dvar = jt.zeros_like(self.mean) if dvar is None else dvar
        return jt.code(self.x.shape, self.x.dtype, [self.x, self.mean, dmean, dvar], **_MOMENTS_GRAD)


class InstanceAffine(jt.Function):
    """``A * (x - mean) + B`` per (n, c) of ``x`` (N, C, L); ``mean``, ``A``, ``B`` (N, C) float64."""

    def execute(self, x, mean, a, b):
        self.x, self.mean, self.a = x, mean, a
        return jt.code(x.shape, x.dtype, [x, mean, a, b], **_AFFINE)

    def grad(self, dy):
        shape = self.mean.shape
        return jt.code([self.x.shape, shape, shape, shape], [self.x.dtype, "float64", "float64", "float64"],
                       [self.x, self.mean, self.a, dy], **_AFFINE_GRAD)


# The (N, C) algebra between the two passes (rbn_jittor.functional._channel_coefficients), per
# channel c over the instances n, in float64. As small Jittor ops it fused into a different kernel
# for every combination of options, dtypes and what was alive at sync time; as two ``jt.code``
# kernels it compiles once per variant of the options. The backward is docs/math.md's, as
# rbn_torch's ``_coefficient_gradients`` writes it.

# An alias is a macro (``@alias(eps, in2)`` defines ``eps``), so locals take other names.
_STATISTIC = {"mu_c": "{mean}", "sigma_c": "sqrt({var} + epsilon)"}  # K of a slice from its moments


@functools.lru_cache(maxsize=None)
def _batch_moments_sources(centering_stat):
    """Sources of :class:`BatchMoments` (forward, backward) for ``centering_stat`` (None: off)."""
    aliases = dict(mean="in0", var="in1", eps="in2")
    moved = grad_center = ""
    if centering_stat:
        aliases["center_weight"] = "in3"
        center = _STATISTIC[centering_stat].format(mean="@mean(n, c)", var="@var(n, c)")
        moved = f" + @center_weight(c) * {center}"
        grad_statistic = ("@grad_mean(n, c) += grad * @center_weight(c);" if centering_stat == "mu_c"
                          else "@grad_var(n, c) += grad * @center_weight(c) * 0.5 / center;")
        grad_center = f"""const float64 center = {center};
        sum_center += grad * center;
        {grad_statistic}"""
    forward = _sources({**aliases, "mean_cm": "out0", "batch_mean": "out1", "batch_var": "out2"}, f"""
    const int64 count = mean_shape0;
    const float64 epsilon = @eps(0);
    float64 sum = 0;
    for (int64 n = 0; n < count; n++) {{
        @mean_cm(n, c) = @mean(n, c){moved};
        sum += @mean_cm(n, c);
    }}
    // second pass: the spread around the first mean (law of total variance), and what rounding
    // left of that mean
    const float64 first = sum / count;
    float64 residual = 0, spread = 0;
    for (int64 n = 0; n < count; n++) {{
        const float64 d = @mean_cm(n, c) - first;
        residual += d;
        spread += @var(n, c) + d * d;
    }}
    residual /= count;
    @batch_mean(c) = first + residual;
    @batch_var(c) = spread / count - residual * residual;
    """, over="channel")
    grad_aliases = {name: f"in{len(aliases) + i}" for i, name in enumerate(
        ["mean_cm", "batch_mean", "grad_mean_cm", "grad_batch_mean", "grad_batch_var"])}
    grad_aliases.update(grad_mean="out0", grad_var="out1", **(dict(grad_center_weight="out2") if centering_stat else {}))
    backward = _sources({**aliases, **grad_aliases}, f"""
    const int64 count = mean_shape0;
    const float64 epsilon = @eps(0), centre = @batch_mean(c), var_share = @grad_batch_var(c) / count;
    float64 sum_center = 0;
    for (int64 n = 0; n < count; n++) {{
        // batch_var's own term in batch_mean, -2 mean_n(mean_cm - batch_mean), is 0
        const float64 grad = @grad_mean_cm(n, c) + @grad_batch_mean(c) / count
                             + 2 * var_share * (@mean_cm(n, c) - centre);
        @grad_mean(n, c) = grad;
        @grad_var(n, c) = var_share;
        {grad_center}
    }}
    {"@grad_center_weight(c) = sum_center;" if centering_stat else ""}
    """, over="channel")
    return forward, backward


@functools.lru_cache(maxsize=None)
def _coefficient_sources(scaling_stat, affine):
    """Sources of :class:`Coefficients` (forward, backward) and the names of the (C,) vectors they
    read after the five fixed inputs, for ``scaling_stat`` (None: off) and ``affine``."""
    vectors = (["scale_weight", "scale_bias"] if scaling_stat else []) + (["weight", "bias"] if affine else [])
    aliases = dict(mean_cm="in0", var="in1", batch_mean="in2", batch_var="in3", eps="in4")
    aliases.update({name: f"in{len(aliases) + i}" for i, name in enumerate(vectors)})
    common = f"""
    const int64 count = mean_cm_shape0;
    const float64 epsilon = @eps(0), centre = @batch_mean(c), inv_std = 1 / sqrt(@batch_var(c) + epsilon);
    const float64 gamma = {"@weight(c)" if affine else "1"}, beta = {"@bias(c)" if affine else "0"};
    """
    gate = "const float64 gate = 1;"
    grad_gate = grad_statistic = ""
    if scaling_stat:
        statistic = _STATISTIC[scaling_stat].format(mean="normalized", var="@var(n, c) * inv_std * inv_std")
        gate = f"""const float64 statistic = {statistic};
        const float64 gate = 1 / (1 + exp(-(@scale_weight(c) * statistic + @scale_bias(c))));"""
        grad_gate = """const float64 grad_logit = (d_scale * inv_std + d_shift * normalized) * gate * (1 - gate);
        sum_scale_bias += grad_logit;
        sum_scale_weight += grad_logit * statistic;"""
        # statistic = sqrt(var inv_std^2 + eps): d/dvar = inv_std^2 / 2s, d/dinv_std = var inv_std / s
        grad_statistic = "d_shift += grad_logit * @scale_weight(c);" if scaling_stat == "mu_c" else """
        const float64 grad_root = grad_logit * @scale_weight(c) * inv_std / statistic;
        d_var = grad_root * 0.5 * inv_std;
        d_scale += grad_root * @var(n, c);"""
    normalized = "const float64 normalized = (@mean_cm(n, c) - centre) * inv_std;  // the mean of X_s"
    forward = _sources({**aliases, "scale": "out0", "shift": "out1"}, common + f"""
    for (int64 n = 0; n < count; n++) {{
        {normalized}
        {gate}
        @scale(n, c) = inv_std * gate * gamma;
        @shift(n, c) = normalized * gate * gamma + beta;
    }}
    """, over="channel")
    grads = ["grad_mean_cm", "grad_var", "grad_batch_mean", "grad_batch_var"] + [f"grad_{name}" for name in vectors]
    grad_aliases = dict(grad_scale=f"in{len(aliases)}", grad_shift=f"in{len(aliases) + 1}")
    grad_aliases.update({name: f"out{i}" for i, name in enumerate(grads)})
    grad_affine = """sum_bias += d_shift;
        sum_weight += (d_scale * inv_std + d_shift * normalized) * gate;""" if affine else ""
    backward = _sources({**aliases, **grad_aliases}, common + f"""
    float64 sum_inv_std = 0, sum_centre = 0{"".join(f", sum_{name} = 0" for name in vectors)};
    for (int64 n = 0; n < count; n++) {{
        {normalized}
        {gate}
        // scale = inv_std * gate * gamma, shift = normalized * gate * gamma + beta
        float64 d_scale = @grad_scale(n, c), d_shift = @grad_shift(n, c), d_var = 0;
        {grad_affine}
        d_scale *= gamma;
        d_shift *= gamma;
        {grad_gate}
        d_scale *= gate;
        d_shift *= gate;
        {grad_statistic}
        sum_inv_std += d_scale + d_shift * (@mean_cm(n, c) - centre);
        @grad_mean_cm(n, c) = d_shift * inv_std;
        @grad_var(n, c) = d_var;
        sum_centre -= d_shift * inv_std;
    }}
    @grad_batch_mean(c) = sum_centre;
    @grad_batch_var(c) = -0.5 * sum_inv_std * inv_std * inv_std * inv_std;
    {"".join(f"@grad_{name}(c) = sum_{name}; " for name in vectors)}
    """, over="channel")
    return forward, backward, vectors


class BatchMoments(jt.Function):
    """The centering calibration and the batch moments from the instance moments.

    ``execute(mean, var, eps, center_weight, centering_stat)``: ``mean``, ``var`` (N, C) float64,
    the instances' mean and biased variance of X; ``eps`` (1,) float64; ``center_weight`` (C,)
    float64, or None (the calibration off; ``centering_stat`` is then ignored). Returns the instances'
    mean of ``X_cm = X + w_m K_m`` (N, C) and the batch mean and biased variance of ``X_cm`` (C,):
    centering moves each instance's mean and keeps its variance (law of total variance).
    """

    def execute(self, mean, var, eps, center_weight, centering_stat):
        forward, self.backward = _batch_moments_sources(centering_stat if center_weight is not None else None)
        self.inputs = [mean, var, eps] + ([center_weight] if center_weight is not None else [])
        n, c = mean.shape
        self.mean_cm, self.batch_mean, batch_var = jt.code([(n, c), (c,), (c,)], ["float64"] * 3, self.inputs, **forward)
        return self.mean_cm, self.batch_mean, batch_var

    def grad(self, grad_mean_cm, grad_batch_mean, grad_batch_var):
        grads = [jt.zeros_like(like) if grad is None else grad for grad, like in
                 [(grad_mean_cm, self.mean_cm), (grad_batch_mean, self.batch_mean), (grad_batch_var, self.batch_mean)]]
        mean = self.inputs[0]
        shapes = [mean.shape, mean.shape] + ([self.batch_mean.shape] if len(self.inputs) > 3 else [])
        out = jt.code(shapes, ["float64"] * len(shapes), self.inputs + [self.mean_cm, self.batch_mean] + grads,
                      **self.backward)
        return out[0], out[1], None, out[2] if len(out) > 2 else None, None


class Coefficients(jt.Function):
    """``A``, ``B`` of ``Y = A * (X - mean) + B`` per (n, c), from the calibrated instance means.

    ``execute(mean_cm, var, batch_mean, batch_var, eps, scale_weight, scale_bias, weight, bias,
    scaling_stat)``: ``mean_cm``, ``var`` (N, C) float64 (:class:`BatchMoments`); ``batch_mean``,
    ``batch_var`` (C,) float64, the batch or running statistics; ``eps`` (1,); the (C,) float64
    vectors, None where their part is off (``scaling_stat`` is ignored without ``scale_weight``).
    Returns ``A``, ``B`` (N, C) float64.
    """

    def execute(self, mean_cm, var, batch_mean, batch_var, eps, scale_weight, scale_bias, weight, bias,
                scaling_stat):
        forward, self.backward, self.names = _coefficient_sources(
            scaling_stat if scale_weight is not None else None, weight is not None)
        given = dict(scale_weight=scale_weight, scale_bias=scale_bias, weight=weight, bias=bias)
        self.inputs = [mean_cm, var, batch_mean, batch_var, eps] + [given[name] for name in self.names]
        return tuple(jt.code([mean_cm.shape] * 2, ["float64"] * 2, self.inputs, **forward))

    def grad(self, grad_scale, grad_shift):
        mean_cm, batch_mean = self.inputs[0], self.inputs[2]
        grad_scale = jt.zeros_like(mean_cm) if grad_scale is None else grad_scale
        grad_shift = jt.zeros_like(mean_cm) if grad_shift is None else grad_shift
        shapes = [mean_cm.shape] * 2 + [batch_mean.shape] * (2 + len(self.names))
        out = jt.code(shapes, ["float64"] * len(shapes), self.inputs + [grad_scale, grad_shift], **self.backward)
        grads = dict(zip(self.names, out[4:]))
        return (*out[:4], None, *(grads.get(name) for name in ("scale_weight", "scale_bias", "weight", "bias")),
                None)
