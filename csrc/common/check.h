// Argument checks for module.cpp. Python validates first with friendlier
// messages; these guard the raw-pointer boundary so bad calls throw instead of
// crashing. std::invalid_argument becomes ValueError in Python.
#pragma once
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace kernkit {

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

inline DType dtype_from_code(int code, const char* arg) {
  require(code >= int(DType::f32) && code <= int(DType::bf16),
          std::string(arg) + ": unknown dtype code " + std::to_string(code));
  return DType(code);
}

}  // namespace kernkit
