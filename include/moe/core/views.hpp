// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
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

/// The mutable view that moe::view() returns for a non-const matrix: a matrix_map that also
/// converts to a const_matrix_map, so that the same `moe::view(x)` can be handed to entry points
/// that read (routers) and to those that write (a layer's y).
template <class Scalar>
class mutable_view : public matrix_map<Scalar> {
 public:
  using base = matrix_map<Scalar>;
  using base::base;
  using base::operator=;
  mutable_view(const base& m) : base(m) {}  // NOLINT: a view is a view
  /// The same memory, read-only.
  operator const_matrix_map<Scalar>() const {  // NOLINT: implicit on purpose
    return const_matrix_map<Scalar>(this->data(), this->rows(), this->cols(), Eigen::OuterStride<>(this->outerStride()));
  }
};

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

/// A mutable view of any row-major Eigen matrix, Map or Block with contiguous rows (no copy);
/// it also converts to a read-only view. A view of a const Map is read-only.
template <class Derived>
auto view(Eigen::DenseBase<Derived>& m) {
  detail::static_check_row_major<Derived>();
  auto& d = m.derived();
  using S = typename Derived::Scalar;
  if constexpr (bool(Eigen::internal::traits<Derived>::Flags & Eigen::LvalueBit)) {
    return mutable_view<S>(d.data(), d.rows(), d.cols(), Eigen::OuterStride<>(detail::row_stride(d)));
  } else {
    return const_matrix_map<S>(d.data(), d.rows(), d.cols(), Eigen::OuterStride<>(detail::row_stride(d)));
  }
}

/// Overload so that temporaries (`view(Eigen::Map<...>(p, r, c))`) bind.
template <class Derived>
auto view(Eigen::DenseBase<Derived>&& m) {
  return view(static_cast<Eigen::DenseBase<Derived>&>(m));
}

/// What a layer does with NaN or ±inf in its token states.
enum class nonfinite_policy {
  error,     ///< throw moe::error naming the first non-finite (token, feature) (the default)
  propagate  ///< no check: non-finite values flow through the arithmetic (inf in x gives NaN in y)
};

namespace detail {
/// Throws moe::error (id input) naming `param`'s first non-finite element, row by row. One pass
/// over the view with integer tests that the compiler vectorises.
inline void check_finite_rows(std::string_view where, std::string_view param, const_matrix_map<float> x) {
  const index cols = x.cols();
  for (index t = 0; t < x.rows(); ++t) {
    const float* row = x.data() + t * x.outerStride();
    unsigned bad = 0;
    for (index i = 0; i < cols; ++i) {
      std::uint32_t b;
      std::memcpy(&b, row + i, sizeof b);
      bad |= static_cast<unsigned>((b & 0x7f800000u) == 0x7f800000u);  // exponent all ones: inf or NaN
    }
    if (bad == 0) continue;
    for (index i = 0; i < cols; ++i) {
      if (!std::isfinite(row[i])) {
        throw_error(error_id::input,
                    concat(where, ": parameter '", param, "' has a non-finite value ", row[i], " at (", t, ", ", i,
                           "); expected finite token states (layer::set_nonfinite(moe::nonfinite_policy::propagate) "
                           "lets them through)"));
      }
    }
  }
}
}  // namespace detail

}  // namespace moe
