#include "train/synthetic.h"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "engine/core/fileio.h"
#include "engine/core/philox.h"

namespace tessera::train {

namespace fs = std::filesystem;

void make_synthetic_dataset(const std::string& root, uint64_t seed) {
  if (fs::is_directory(fs::path(root) / "Training")) return;
  const char* classes[] = {"disc", "ring", "stripes", "checkerboard"};
  constexpr int S = 96;
  uint64_t counter = 0;
  auto uniform = [&] { return philox::uniform(seed, counter++); };
  for (const char* split : {"Training", "Testing"}) {
    const int per_class = std::string(split) == "Training" ? 60 : 15;
    for (int c = 0; c < 4; ++c) {
      const fs::path dir = fs::path(root) / split / classes[c];
      fs::create_directories(dir);
      for (int k = 0; k < per_class; ++k) {
        const double cx = S * (0.3 + 0.4 * uniform()), cy = S * (0.3 + 0.4 * uniform());
        const double r = S * (0.15 + 0.15 * uniform()), period = 6 + 10 * uniform(), angle = M_PI * uniform();
        std::vector<uint8_t> gray(S * S);
        for (int y = 0; y < S; ++y)
          for (int x = 0; x < S; ++x) {
            const double d = std::hypot(x - cx, y - cy);
            const double u = (x - cx) * std::cos(angle) + (y - cy) * std::sin(angle);
            const double v = -(x - cx) * std::sin(angle) + (y - cy) * std::cos(angle);
            bool on = false;
            if (c == 0) on = d < r;
            if (c == 1) on = d < r && d > 0.6 * r;
            if (c == 2) on = d < 1.4 * r && std::fmod(std::abs(u), period) < period / 2;
            if (c == 3) on = d < 1.4 * r && (int(std::floor(u / period)) + int(std::floor(v / period))) % 2 == 0;
            const double value = 40 + (on ? 150 : 0) + 50 * uniform();
            gray[size_t(y * S + x)] = uint8_t(std::min(255.0, value));
          }
        std::string png;
        stbi_write_png_to_func([](void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size_t(n)); },
                               &png, S, S, 1, gray.data(), S);
        char name[32];
        std::snprintf(name, sizeof name, "%s_%03d.png", classes[c], k);
        write_file_atomic((dir / name).string(), png);
      }
    }
  }
}

}  // namespace tessera::train
