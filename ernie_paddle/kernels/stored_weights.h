// The operators' weight inputs (WT and its scales S0..S3) checked against their format code and turned into
// Mats (weight_formats.h): every dtype and every shape is checked, so a wrong or truncated tensor fails
// with a message naming the input and what was expected, and no kernel reads out of bounds.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "paddle/extension.h"
#include "weight_formats.h"

namespace ernie {

constexpr int kFormats = 6;
constexpr const char* kFormatNames[kFormats] = {"float32", "bfloat16", "wint8", "wint4", "fp8", "wint2"};

// The weight inputs of one matrix (or one stack of experts): WT, S0, S1, S2, S3.
struct WeightInputs {
  const paddle::Tensor& wt;
  const paddle::Tensor& s0;
  const paddle::Tensor& s1;
  const paddle::Tensor& s2;
  const paddle::Tensor& s3;
};

// A validated stack of `experts` matrices [n, k] (1 for a plain linear); expert(e) is one of them.
struct StoredWeights {
  Mat first;
  int64_t experts = 1;
  int64_t q_bytes = 0, s0_bytes = 0, vec = 0;  // per-expert strides: WT and S0 in bytes, S1..S3 in floats

  Mat expert(int64_t e) const {
    Mat m = first;
    m.q = static_cast<const char*>(first.q) + e * q_bytes;
    m.s0 = first.s0 == nullptr ? nullptr : static_cast<const char*>(first.s0) + e * s0_bytes;
    if (first.s1 != nullptr) m.s1 += e * vec, m.s2 += e * vec, m.s3 += e * vec;
    return m;
  }
};

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

inline std::string dtypes_text(const std::vector<paddle::DataType>& dtypes) {
  std::string s;
  for (size_t i = 0; i < dtypes.size(); ++i) s += (i ? " or " : "") + phi::DataTypeToString(dtypes[i]);
  return s;
}

// Fails unless t has one of `dtypes` and exactly `shape` (contiguous), naming op, input and format.
inline void expect(const paddle::Tensor& t, const std::string& where, const std::vector<paddle::DataType>& dtypes,
                   const std::vector<int64_t>& shape) {
  bool dtype_ok = false;
  for (auto d : dtypes) dtype_ok = dtype_ok || t.dtype() == d;
  PD_CHECK(dtype_ok && t.shape() == shape, where, " must be ", dtypes_text(dtypes), " ", shape_text(shape), "; got ",
           phi::DataTypeToString(t.dtype()), " ", shape_text(t.shape()));
  PD_CHECK(t.is_contiguous(), where, " must be contiguous");
}

inline std::vector<int64_t> with_lead(const std::vector<int64_t>& lead, std::vector<int64_t> dims) {
  dims.insert(dims.begin(), lead.begin(), lead.end());
  return dims;
}

// Validates the inputs of `name` (e.g. "ernie_linear: WT") as format `fmt` holding `experts` matrices
// [n, k] (experts = 0: a plain matrix without the leading axis).
inline StoredWeights stored_weights(const std::string& name, int fmt, const WeightInputs& in, int64_t experts,
                                    int64_t n, int64_t k) {
  using DT = paddle::DataType;
  PD_CHECK(fmt >= 0 && fmt < kFormats, name, ": unknown weight format code ", fmt, " (0..5: float32, bfloat16, ",
           "wint8, wint4, fp8, wint2)");
  const std::string where = name + " (" + kFormatNames[fmt] + ")";
  const std::vector<int64_t> lead = experts > 0 ? std::vector<int64_t>{experts} : std::vector<int64_t>{};
  const int64_t per_byte = fmt == Wint4::kCode ? 2 : fmt == Wint2::kCode ? 4 : 1;
  PD_CHECK(n > 0 && k > 0, where, ": empty weight [", n, ", ", k, "]");
  PD_CHECK(k % per_byte == 0 && (fmt != Wint2::kCode || k % Wint2::kGroup == 0), where, ": K = ", k,
           fmt == Wint2::kCode ? " must be a multiple of 64" : " must be even");
  const std::vector<std::vector<DT>> q_types = {{DT::FLOAT32}, {DT::BFLOAT16, DT::UINT16}, {DT::INT8},
                                                {DT::UINT8, DT::INT8}, {DT::UINT8, DT::INT8, DT::FLOAT8_E4M3FN},
                                                {DT::UINT8, DT::INT8}};
  expect(in.wt, where + " WT", q_types[fmt], with_lead(lead, {n, k / per_byte}));
  const int64_t blocks_k = (k + Fp8::kBlock - 1) / Fp8::kBlock;
  if (fmt == Wint8::kCode || fmt == Wint4::kCode) {
    expect(in.s0, where + " S0 (per-row scale)", {DT::FLOAT32}, with_lead(lead, {n}));
  } else if (fmt == Fp8::kCode) {
    expect(in.s0, where + " S0 (block scales)", {DT::FLOAT32}, with_lead(lead, {(n + Fp8::kBlock - 1) / Fp8::kBlock, blocks_k}));
  } else if (fmt == Wint2::kCode) {
    expect(in.s0, where + " S0 (local scales)", {DT::UINT8, DT::INT8}, with_lead(lead, {n, blocks_k}));
    expect(in.s1, where + " S1 (super scales)", {DT::FLOAT32}, with_lead(lead, {n}));
    expect(in.s2, where + " S2 (code scale)", {DT::FLOAT32}, with_lead(lead, {n}));
    expect(in.s3, where + " S3 (code zero point)", {DT::FLOAT32}, with_lead(lead, {n}));
  }
  StoredWeights out;
  out.experts = std::max<int64_t>(experts, 1);
  out.first.q = in.wt.data();
  out.first.n = n;
  out.first.k = k;
  const int64_t elem = fmt == F32::kCode ? 4 : fmt == Bf16::kCode ? 2 : 1;
  out.q_bytes = n * (k / per_byte) * elem;
  if (fmt >= Wint8::kCode) {
    out.first.s0 = in.s0.data();
    out.s0_bytes = in.s0.numel() / out.experts * (fmt == Wint2::kCode ? 1 : 4);
  }
  if (fmt == Wint2::kCode) {
    out.first.s1 = in.s1.data<float>();
    out.first.s2 = in.s2.data<float>();
    out.first.s3 = in.s3.data<float>();
    out.vec = n;
  }
  return out;
}

}  // namespace ernie
