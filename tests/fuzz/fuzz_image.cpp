// The image decoders on untrusted bytes: libjpeg-turbo for JPEG, stb_image for the other formats. The pixel
// limit is lowered so that a header declaring a huge image is refused before decoding (as the real limit
// does at its size) and the fuzzer's memory stays bounded.
#include <exception>

#include "data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::ImageLimits limits;
  limits.max_pixels = 1 << 22;
  try {
    const tessera::Image im = tessera::decode_image_memory(data, size, "fuzz-input", limits);
    if (int64_t(im.width) * im.height > limits.max_pixels || im.rgb.size() != size_t(im.width) * im.height * 3)
      __builtin_trap();  // a decoded image larger than the limit, or whose buffer is not its size
  } catch (const std::exception&) {
  }
  return 0;
}
