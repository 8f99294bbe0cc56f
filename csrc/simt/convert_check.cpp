// Bit-level access to simt's half/bf16 conversions, so tests can compare them with torch's.
// kind 0: float -> half bits (__float2half_rn)   1: half bits -> float (__half2float)
//      2: float -> bf16 bits (__float2bfloat16_rn) 3: bf16 bits -> float (__bfloat162float)
// `in` and `out` hold n elements of the kind's input and output types (float or uint16).
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace kk_simt {

void convert_bits(int kind, const void* in, void* out, long long n) {
  if (n < 0) throw std::invalid_argument("convert_bits: negative count");
  const float* fin = static_cast<const float*>(in);
  const std::uint16_t* hin = static_cast<const std::uint16_t*>(in);
  float* fout = static_cast<float*>(out);
  std::uint16_t* hout = static_cast<std::uint16_t*>(out);
  switch (kind) {
    case 0:
      for (long long i = 0; i < n; ++i) hout[i] = __half_as_ushort(__float2half_rn(fin[i]));
      break;
    case 1:
      for (long long i = 0; i < n; ++i) fout[i] = __half2float(__ushort_as_half(hin[i]));
      break;
    case 2:
      for (long long i = 0; i < n; ++i) hout[i] = __bfloat16_as_ushort(__float2bfloat16_rn(fin[i]));
      break;
    case 3:
      for (long long i = 0; i < n; ++i) fout[i] = __bfloat162float(__ushort_as_bfloat16(hin[i]));
      break;
    default:
      throw std::invalid_argument("convert_bits: kind must be 0..3");
  }
}

}  // namespace kk_simt
