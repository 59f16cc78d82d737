// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

/// Row-major dynamic matrix: the layout of every token matrix `[T × d]` and weight `[out × in]`.
template <class Scalar>
using row_matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Mutable row-major view over caller memory (rows may be padded: `outerStride() >= cols()`).
template <class Scalar>
using matrix_map = Eigen::Map<row_matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Read-only row-major view over caller memory.
template <class Scalar>
using const_matrix_map =
    Eigen::Map<const row_matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Views `rows × cols` floats at `data`, row `r` starting at `data + r * stride` (no copy).
template <class Scalar>
matrix_map<Scalar> map(Scalar* data, index rows, index cols, index stride = -1) {
  return matrix_map<Scalar>(data, rows, cols, Eigen::OuterStride<>(stride < 0 ? cols : stride));
}

/// Read-only overload of map().
template <class Scalar>
const_matrix_map<Scalar> map(const Scalar* data, index rows, index cols, index stride = -1) {
  return const_matrix_map<Scalar>(data, rows, cols,
                                  Eigen::OuterStride<>(stride < 0 ? cols : stride));
}

namespace detail {
template <class Derived>
constexpr void static_check_row_major() {
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1 || Derived::RowsAtCompileTime == 1,
                "moe: token and weight matrices must be row-major ([rows × cols], a row "
                "contiguous); use moe::row_matrix<float> or an Eigen::Map with Eigen::RowMajor");
  static_assert(bool(Eigen::internal::traits<Derived>::Flags & Eigen::DirectAccessBit),
                "moe: the matrix must have direct memory access (a Matrix, Map or Block), "
                "not an expression; evaluate it into a matrix first");
}
}  // namespace detail

namespace detail {
// Row stride of a row-major view of d: the outer stride of a row-major matrix; for a column
// vector (one column) the distance between its elements. Elements of a row must be contiguous.
template <class Derived>
index row_stride(const Derived& d) {
  if (d.cols() > 1 && d.innerStride() != 1) {
    fail_parameter(error_id::shape, "moe::view", "innerStride()", "1 (contiguous rows)", d.innerStride());
  }
  if (d.cols() == 1) return Derived::IsRowMajor ? d.outerStride() : d.innerStride();
  return Derived::IsRowMajor ? d.outerStride() : d.cols();
}
}  // namespace detail

/// A read-only view of any row-major Eigen matrix, Map or Block with contiguous rows (no copy).
template <class Derived>
const_matrix_map<typename Derived::Scalar> view(const Eigen::DenseBase<Derived>& m) {
  detail::static_check_row_major<Derived>();
  const auto& d = m.derived();
  return const_matrix_map<typename Derived::Scalar>(d.data(), d.rows(), d.cols(),
                                                    Eigen::OuterStride<>(detail::row_stride(d)));
}

/// A mutable view of any row-major Eigen matrix, Map or Block with contiguous rows (no copy).
template <class Derived>
matrix_map<typename Derived::Scalar> view(Eigen::DenseBase<Derived>& m) {
  detail::static_check_row_major<Derived>();
  auto& d = m.derived();
  return matrix_map<typename Derived::Scalar>(d.data(), d.rows(), d.cols(),
                                              Eigen::OuterStride<>(detail::row_stride(d)));
}

/// Overload so that temporaries (`view(Eigen::Map<...>(p, r, c))`) bind.
template <class Derived>
matrix_map<typename Derived::Scalar> view(Eigen::DenseBase<Derived>&& m) {
  return view(static_cast<Eigen::DenseBase<Derived>&>(m));
}

}  // namespace moe
