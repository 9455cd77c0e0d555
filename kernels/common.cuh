// kernels/common.cuh: device helpers shared by every rnncu kernel file.
//
// Activations are selected by a compile-time int (kTanh = 0, kRelu = 1) so that the
// branch disappears from the generated code. Derivatives are taken from the activation's
// *output* h = act(z), which is what the forward pass keeps in `states`; the
// pre-activation z is never stored.
//
// Only NVRTC built-ins are used here (no system headers), so the file compiles with the
// CuPy/NVRTC toolchain that ships with the wheels. The loader inlines this file into the
// including source, so CuPy's disk-cache key covers it too.
#pragma once

namespace rnncu {

enum Activation : int { kTanh = 0, kRelu = 1 };

__device__ __forceinline__ float tanh_of(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_of(double x) { return tanh(x); }

// act(x). relu keeps a NaN input NaN (x < 0 is false for NaN), like numpy.maximum(x, 0).
template <int ACT, typename T>
__device__ __forceinline__ T activate(T x) {
  if constexpr (ACT == kTanh) {
    return tanh_of(x);
  } else {
    return x < T(0) ? T(0) : x;
  }
}

// act'(z) written in terms of the output h = act(z): tanh' = 1 - h^2, relu' = [h > 0].
template <int ACT, typename T>
__device__ __forceinline__ T activation_grad_from_output(T h) {
  if constexpr (ACT == kTanh) {
    return T(1) - h * h;
  } else {
    return h > T(0) ? T(1) : T(0);
  }
}

// 16 bytes of T (float4 / double2), for vector loads; unpack spreads one into T values.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int kWidth = 4;
  __device__ __forceinline__ static void unpack(float* d, float4 v) {
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
  }
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int kWidth = 2;
  __device__ __forceinline__ static void unpack(double* d, double2 v) {
    d[0] = v.x;
    d[1] = v.y;
  }
};

// Whether step t is a real (non-padding) step of batch row b. lengths == nullptr means
// every row runs all T steps.
__device__ __forceinline__ bool step_is_valid(const int* __restrict__ lengths, int b, int t) {
  return lengths == nullptr || t < __ldg(lengths + b);
}

}  // namespace rnncu
