// C++ CPU kernels of shallowkern::_wide_conv2d_native (forward) and
// shallowkern::_wide_conv2d_native_backward (backward), float32 and float64.
//
// Math (zero padding, cross-correlation as nn.Conv2d; g(k) = first input channel of k's group):
//   y[n,k,p,q]   = b[k] + sum_{c,r,s} x[n, g(k)+c, p*sh-ph+r*dh, q*sw-pw+s*dw] * w[k,c,r,s]
//   a            = relu(y) if relu else y
//   out[n,k,i,j] = max_{di,dj} a[n,k,2i+di,2j+dj]  (pool 2; floor mode: odd last row/col unused)
//   idx[n,k,i,j] = 2*di+dj of the max, scanning (0,0),(0,1),(1,0),(1,1) with the rule
//                  `v > best || isnan(v)` of aten's max_pool2d; 4 (NO_GRAD) if relu and out <= 0
// Backward (gy = gradient of the pre-activation y, built per chunk, never for the whole batch):
//   gy[n,k,2i+di,2j+dj] = gout[n,k,i,j] if idx[n,k,i,j] == 2*di+dj else 0   (pool 2)
//   gy = out > 0 ? gout : 0  (pool 1 + relu),  gy = gout  (pool 1)
//   gx = col2im(W^T gy),  gw = sum_n gy col(x)^T,  gb = sum_{n,p,q} gy
// (selects, as aten's max_pool2d / threshold backward: a non-finite gout stays where it belongs.)
//
// Design. Work units are (image, group) pairs, split evenly over threads by at::parallel_for and
// batched into chunks of B images (GEMMs wide enough for MKL to run at its peak). Per image, the
// group's channels are copied once into a zero-padded HWC buffer; the im2col matrix colT
// (positions x CRS, CRS in (r, s, c) order) is then R contiguous runs of S*Cg values per position
// (memcpy, no bounds checks), and the weight is permuted to (K, R, S, Cg) to match. Only the
// P = EH*EW conv positions that reach the output are computed, ordered window-major for pool 2
// (the four positions of each 2x2 window in four contiguous sub-planes), so that the epilogue
// (bias, ReLU, 2x2 max with aten's first-max / NaN rule, uint8 indices) is an elementwise,
// vectorized pass over the GEMM result while it is in cache, writing only the pooled output: the
// unpooled activation never reaches memory (conv2d -> relu -> max_pool2d writes it twice and
// reads it twice). The GEMMs go through ATen (at::mm_out / addmm_out on views of thread-local
// buffers: MKL here; inside at::parallel_for it runs single-threaded, so no oversubscription).
// The forward has two more ways to y, chosen by reduction length (forward_path): short
// reductions (CRS <= 512: the first layer, conv2 at small d1) run a direct AVX-512 kernel with
// no im2col and the epilogue in registers (forward_direct); longer ones (CRS >= 512: conv2 from
// d1 ~ 21), where the conv is compute-bound, run oneDNN's convolution for the whole batch and
// fuse only the epilogue (one more read of y, cheap next to the conv).
// The backward mirrors it: gy of a chunk from grad_out + saved (window-major, branch-free), gw
// accumulated per thread with MKL beta = 1 and reduced in a fixed order (deterministic for a
// given thread count), gx = col2im(gy^T W) scatter-added into the padded buffer of the chunk's
// own images and channels (no races), gb summed in double. With pool 2 in float32 on AVX2 CPUs,
// the two backward GEMMs become sparse row combinations over the non-zeros of gy (at most one
// per 2x2 window: a quarter of the multiply-adds; see combine_rows), ~2x faster on conv2 shapes;
// SHALLOWKERN_CPU_SPARSE_BACKWARD=0 selects the dense GEMMs (tests run both).
// References: Chellapilla et al., "High performance convolutional neural networks for document
// processing" (2006) for im2col + GEMM; aten/src/ATen/native/cpu/MaxPoolKernel.cpp for the
// NaN rule of max_pool2d.
//
// Files: wide_conv2d_forward.cpp (the forward paths), wide_conv2d_backward.cpp (the backward),
// this file (registration of the CPU and Meta kernels); the helpers they share with other ops are
// in csrc/include/shallowkern/cpu/ (layout, im2col, work split, CPU features, sparse rows).
#include <torch/library.h>

#include "wide_conv2d.h"

TORCH_LIBRARY_IMPL(shallowkern, CPU, m) {
  m.impl("_wide_conv2d_native", &shallowkern::cpu::wide_conv2d_forward_cpu);
  m.impl("_wide_conv2d_native_backward", &shallowkern::cpu::wide_conv2d_backward_cpu);
}

// Shapes for fake / meta tensors (torch.compile, torch.export, FakeTensorMode), from the same
// checks and geometry as the kernels.
TORCH_LIBRARY_IMPL(shallowkern, Meta, m) {
  m.impl("_wide_conv2d_native", &shallowkern::cpu::wide_conv2d_forward_meta);
  m.impl("_wide_conv2d_native_backward", &shallowkern::cpu::wide_conv2d_backward_meta);
}
