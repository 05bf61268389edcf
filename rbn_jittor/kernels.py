"""The channel path's four passes as ``jt.code`` kernels, each compiled once per dtype.

Written as many small Jittor ops, the passes fuse into kernels that vary with what is alive at
sync time, so a cold cache compiles hundreds of them (issue 12). A ``jt.code`` kernel is one op
whose source does not change: Jittor compiles it once per input dtype and reuses it for every
shape (the sizes are run-time values). The four passes, on ``x`` viewed as (N, C, L), with
``Y = A * (X - mean) + B`` per (n, c) instance (``rbn_jittor.functional``):

- :class:`InstanceMoments`: the per-(n, c) mean and biased variance, two-pass with float64 sums;
  its backward is one elementwise pass.
- :class:`InstanceAffine`: ``Y`` from ``A``, ``B``, ``mean``; its backward is one pass that
  writes ``dX = A * dY`` and sums ``dY`` and ``dY * (X - mean)`` per instance.

The per-(n, c) vectors are float64; the elementwise arithmetic is in the input's dtype, as in
``rbn_mindspore/cpu_kernels.cc``. The CUDA source runs one thread per instance (simple, not tuned;
untested here: this machine has no GPU).
"""

import jittor as jt

def _sources(aliases, body):
    """``jt.code`` sources running ``body`` once per (n, c) instance: a loop on the CPU, a thread on CUDA."""
    aliases = "\n".join(f"@alias({name}, {arg})" for name, arg in aliases.items())
    cpu = f"""{aliases}
for (int64 n = 0; n < x_shape0; n++)
    for (int64 c = 0; c < x_shape1; c++) {{ {body} }}
"""
    cuda = f"""
__global__ static void instance_kernel(@ARGS_DEF) {{
    @PRECALC
    {aliases}
    const int64 i = blockIdx.x * (int64)blockDim.x + threadIdx.x;
    if (i >= x_shape0 * x_shape1) return;
    const int64 n = i / x_shape1, c = i % x_shape1;
    {body}
}}
{aliases}
instance_kernel<<<(x_shape0 * x_shape1 - 1) / 256 + 1, 256>>>(@ARGS);
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
