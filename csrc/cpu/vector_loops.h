// Vectorisable loops shared by the CPU kernels: conversion, scaling, axpy, and sums and dot
// products over kDotLanes independent lanes (so they vectorise without reassociating float
// adds), combined lane by lane in a fixed order: results depend on n only, never on threads.
//
// The helpers have internal linkage (unnamed namespace): GAEA_SIMD_CLONES makes ifunc
// resolvers, which must not be merged across translation units.
#pragma once

#include <cstdint>

#include "simd_clones.h"

namespace gaea_ext {
namespace {

constexpr int kDotLanes = 16;

// acc[0:n] = in[0:n], converted to the accumulation type.
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void load_chunk(acc_t* __restrict acc, const scalar_t* __restrict in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = static_cast<acc_t>(in[i]);
}

// out[0:n] = w * g[0:n]
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void scale_chunk(scalar_t* __restrict out, const acc_t* __restrict g, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(w * g[i]);
}

// acc[0:n] += w * y[0:n]
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void axpy(acc_t* __restrict acc, const scalar_t* __restrict y, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * static_cast<acc_t>(y[i]);
}

// sum(x[0:n]), accumulated in sum_t.
template <typename sum_t, typename scalar_t>
GAEA_SIMD_CLONES sum_t sum_chunk(const scalar_t* __restrict x, int64_t n) {
  sum_t lanes[kDotLanes] = {};
  const int64_t body = n - n % kDotLanes;
  for (int64_t i = 0; i < body; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += static_cast<sum_t>(x[i + l]);
  }
  for (int64_t i = body; i < n; ++i) lanes[i - body] += static_cast<sum_t>(x[i]);
  sum_t total = 0;
  for (int l = 0; l < kDotLanes; ++l) total += lanes[l];
  return total;
}

// sum((x[0:n] - centre)^2), accumulated in sum_t.
template <typename sum_t, typename scalar_t>
GAEA_SIMD_CLONES sum_t squared_deviation_chunk(const scalar_t* __restrict x, sum_t centre, int64_t n) {
  sum_t lanes[kDotLanes] = {};
  const int64_t body = n - n % kDotLanes;
  for (int64_t i = 0; i < body; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) {
      const sum_t d = static_cast<sum_t>(x[i + l]) - centre;
      lanes[l] += d * d;
    }
  }
  for (int64_t i = body; i < n; ++i) {
    const sum_t d = static_cast<sum_t>(x[i]) - centre;
    lanes[i - body] += d * d;
  }
  sum_t total = 0;
  for (int l = 0; l < kDotLanes; ++l) total += lanes[l];
  return total;
}

// <y[0:n], g[0:n]>
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES acc_t dot_chunk(const scalar_t* __restrict y, const acc_t* __restrict g, int64_t n) {
  acc_t lanes[kDotLanes] = {};
  const int64_t body = n - n % kDotLanes;
  for (int64_t i = 0; i < body; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += static_cast<acc_t>(y[i + l]) * g[i + l];
  }
  for (int64_t i = body; i < n; ++i) lanes[i - body] += static_cast<acc_t>(y[i]) * g[i];
  acc_t total = 0;
  for (int l = 0; l < kDotLanes; ++l) total += lanes[l];
  return total;
}

// out[0:n] = w * g[0:n] and returns <y[0:n], g[0:n]> (as dot_chunk), in one pass.
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES acc_t scale_and_dot_chunk(scalar_t* __restrict out, const scalar_t* __restrict y,
                                           const acc_t* __restrict g, acc_t w, int64_t n) {
  acc_t lanes[kDotLanes] = {};
  const int64_t body = n - n % kDotLanes;
  for (int64_t i = 0; i < body; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) {
      out[i + l] = static_cast<scalar_t>(w * g[i + l]);
      lanes[l] += static_cast<acc_t>(y[i + l]) * g[i + l];
    }
  }
  for (int64_t i = body; i < n; ++i) {
    out[i] = static_cast<scalar_t>(w * g[i]);
    lanes[i - body] += static_cast<acc_t>(y[i]) * g[i];
  }
  acc_t total = 0;
  for (int l = 0; l < kDotLanes; ++l) total += lanes[l];
  return total;
}

}  // namespace
}  // namespace gaea_ext
