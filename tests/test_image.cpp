// Decoding untrusted files: the limits (file type, file size, declared pixels) refuse a file before the
// expensive step, and libjpeg-turbo's errors are exceptions, never exit(). Pixel equality with Pillow for
// the fixture JPEGs is checked in test_preprocess.cpp; here: progressive and CMYK JPEGs, and the refusals.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "engine/core/fileio.h"
#include "engine/safetensors.h"
#include "tests/temp_dir.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

const fs::path kSource = fs::path(TESSERA_SOURCE_DIR) / "tests" / "fixtures";

std::vector<uint8_t> read_bytes(const fs::path& p) {
  const std::string s = read_file(p.string());
  return {s.begin(), s.end()};
}
void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  write_file_atomic(p, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

// The exception message of decode_image(path, limits), or "" when it did not throw.
std::string decode_error(const std::string& path, const ImageLimits& limits = {}) {
  try {
    decode_image(path, limits);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "";
}

// The process's peak resident memory so far, in MiB.
double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

// PNG's CRC-32 (ISO 3309, the one zlib computes) of the chunk type and data.
uint32_t png_crc(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(uint8_t(x >> s));
}

// A PNG that is only a header: IHDR declaring w x h 8-bit RGB, then IEND. No pixel data at all.
std::vector<uint8_t> png_header_only(uint32_t w, uint32_t h) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  auto chunk = [&](const char* type, const std::vector<uint8_t>& data) {
    put_be32(png, uint32_t(data.size()));
    const size_t start = png.size();
    png.insert(png.end(), type, type + 4);
    png.insert(png.end(), data.begin(), data.end());
    put_be32(png, png_crc(png.data() + start, png.size() - start));
  };
  std::vector<uint8_t> ihdr;
  put_be32(ihdr, w);
  put_be32(ihdr, h);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, no filter method, no interlace
  chunk("IHDR", ihdr);
  chunk("IEND", {});
  return png;
}

// The fixture JPEG with its frame header (SOF0/SOF2) declaring w x h instead.
std::vector<uint8_t> jpeg_declaring(int w, int h) {
  std::vector<uint8_t> j = read_bytes(kSource / "preprocess" / "rgb_96x64.jpg");
  for (size_t i = 2; i + 8 < j.size(); ++i)
    if (j[i] == 0xFF && (j[i + 1] == 0xC0 || j[i + 1] == 0xC2)) {
      // FF Cn, length (2), precision (1), height (2), width (2)
      j[i + 5] = uint8_t(h >> 8), j[i + 6] = uint8_t(h);
      j[i + 7] = uint8_t(w >> 8), j[i + 8] = uint8_t(w);
      return j;
    }
  FAIL("no frame header in the fixture JPEG");
  return j;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// First in the file, so the peak-memory reading starts from a small process.
TEST_CASE("limits: devices, FIFOs, oversized files and pixel bombs are refused before reading or decoding") {
  tessera::testing::TempDir dir("image");
  const double rss_before = peak_rss_mib();
  const auto t0 = std::chrono::steady_clock::now();

  // Header-only PNG declaring 16384 x 16384 = 268,435,456 pixels (805 MB of RGB): over Pillow's limit.
  write_bytes(dir / "bomb.png", png_header_only(16384, 16384));
  std::string msg = decode_error(dir / "bomb.png");
  CHECK(contains(msg, "bomb.png: cannot decode image: 16384x16384 = 268435456 pixels is over the limit of 89478485"));
  // The same through memory, and a JPEG whose frame header declares 16384 x 16384 (libjpeg's header
  // parse): decoding would allocate 805 MB for the output before finding the scan data short.
  const auto jbomb = jpeg_declaring(16384, 16384);
  msg.clear();
  try {
    decode_image_memory(jbomb.data(), jbomb.size(), "jbomb");
  } catch (const ImageError& e) {
    msg = e.what();
  }
  CHECK(contains(msg, "jbomb: cannot decode image: 16384x16384 = 268435456 pixels is over the limit"));

  // /dev/zero never ends: reading it "whole" would run out of memory.
  msg = decode_error("/dev/zero");
  CHECK(msg == "/dev/zero: cannot read image: not a regular file (a character device)");

  // Opening a FIFO for reading waits for a writer: refused from its metadata, never opened.
  REQUIRE(::mkfifo((dir / "pipe.jpg").c_str(), 0600) == 0);
  msg = decode_error(dir / "pipe.jpg");
  CHECK(contains(msg, "pipe.jpg: cannot read image: not a regular file (a FIFO)"));

  // 64 MiB + 1 byte, sparse: refused from its size, not read (reading would add 64 MiB to the peak).
  const std::string big = dir / "big.png";
  write_bytes(big, png_header_only(10, 10));
  fs::resize_file(big, ImageLimits::kDefaultMaxFileBytes + 1);
  msg = decode_error(big);
  CHECK(contains(msg, "big.png: cannot read image: file is 67108865 bytes, over the limit of 67108864"));

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double grown = peak_rss_mib() - rss_before;
  MESSAGE("refusals took " << seconds << " s; peak memory grew by " << grown << " MiB");
  // Each refusal reads at most a header: microseconds and no memory to speak of. The bounds are far
  // below what any of the files would cost if read or decoded (64 MiB read, 805 MB allocated).
  CHECK(seconds < 1.0);
  CHECK(grown < 16.0);
}

TEST_CASE("limits: the pixel and size limits are inclusive bounds and can be lowered") {
  const std::string jpg = (kSource / "preprocess" / "rgb_96x64.jpg").string();
  ImageLimits at{.max_pixels = 96 * 64, .max_file_bytes = fs::file_size(jpg)};
  const Image im = decode_image(jpg, at);
  CHECK(im.width == 96);
  CHECK(im.height == 64);

  ImageLimits fewer = at;
  fewer.max_pixels = 96 * 64 - 1;
  CHECK(contains(decode_error(jpg, fewer), "96x64 = 6144 pixels is over the limit of 6143"));
  ImageLimits smaller = at;
  smaller.max_file_bytes = at.max_file_bytes - 1;
  CHECK(contains(decode_error(jpg, smaller), "rgb_96x64.jpg: cannot read image: file is " +
                                                 std::to_string(at.max_file_bytes) + " bytes, over the limit"));
  // A PNG through stb's header parse, the same bound.
  const std::string png = (kSource / "preprocess" / "rgb_37x23.png").string();
  CHECK(decode_image(png, ImageLimits{.max_pixels = 37 * 23}).width == 37);
  CHECK(contains(decode_error(png, ImageLimits{.max_pixels = 37 * 23 - 1}), "over the limit of 850"));
}

TEST_CASE("limits: a refused image is skipped by try_decode and the loader, with one warning naming it") {
  tessera::testing::TempDir dir("image-loader");
  const std::string good = (kSource / "preprocess" / "rgb_37x23.png").string();
  const std::string bomb = dir / "bomb.png";
  write_bytes(bomb, png_header_only(16384, 16384));

  std::string warning;
  CHECK_FALSE(try_decode(Sample{bomb, 0}, warning).has_value());
  CHECK(contains(warning, "bomb.png: cannot decode image: 16384x16384"));
  // A lowered limit refuses the ordinary image too.
  CHECK_FALSE(try_decode(Sample{good, 0}, warning, ImageLimits{.max_pixels = 100}).has_value());
  CHECK(contains(warning, "rgb_37x23.png: cannot decode image: 37x23 = 851 pixels is over the limit of 100"));

  LoaderConfig cfg;
  cfg.processor = ProcessorConfig::vit(16);
  cfg.batch_size = 4;
  cfg.shuffle = false;
  cfg.num_workers = 1;
  DataLoader loader({Sample{good, 0}, Sample{bomb, 1}, Sample{good, 1}}, 2, cfg);
  loader.start_epoch(0);
  int64_t rows = 0;
  while (auto b = loader.next()) rows += b->size();
  CHECK(rows == 2);
  CHECK(loader.skipped() == 1);
  REQUIRE(loader.warnings().size() == 1);
  CHECK(contains(loader.warnings()[0], "bomb.png: cannot decode image: 16384x16384"));
}

TEST_CASE("JPEG: progressive decodes to the baseline file's (Pillow's) pixels exactly") {
  // The progressive file is the baseline fixture transcoded losslessly (same DCT coefficients, only the
  // scan order differs: libjpeg's jpeg_read_coefficients / jpeg_simple_progression / jpeg_write_coefficients),
  // so its pixels must be exactly the baseline's, which are exactly Pillow's (test_preprocess).
  const Image prog = decode_image((kSource / "image" / "rgb_96x64_progressive.jpg").string());
  const SafetensorsFile expected((kSource / "preprocess" / "expected.safetensors").string());
  const Tensor want = expected.get("decoded/rgb_96x64");
  REQUIRE(prog.width == 96);
  REQUIRE(prog.height == 64);
  REQUIRE(prog.rgb.size() == size_t(want.numel()));
  size_t mismatches = 0;
  for (size_t i = 0; i < prog.rgb.size(); ++i) mismatches += prog.rgb[i] != want.data<uint8_t>()[i];
  CHECK(mismatches == 0);
}

TEST_CASE("JPEG: CMYK (Adobe, inverted) converts with Pillow's formula") {
  // Four flat 8x8 blocks written by libjpeg at quality 100 (DC quantiser 1: flat blocks come back exact),
  // stored inverted as Adobe does. True CMYK -> RGB: R = (255 - k) - c (255 - k) / 255, and so on.
  const Image im = decode_image((kSource / "image" / "cmyk_32x8.jpg").string());
  REQUIRE(im.width == 32);
  REQUIRE(im.height == 8);
  struct Block { const char* what; uint8_t r, g, b; };
  const Block blocks[] = {{"white (no ink)", 255, 255, 255},
                          {"cyan", 0, 255, 255},
                          {"magenta + yellow = red", 255, 0, 0},
                          {"k = 128: 255 - 128 = 127", 127, 127, 127}};
  for (int k = 0; k < 4; ++k) {
    CAPTURE(blocks[k].what);
    for (int y = 0; y < 8; ++y)
      for (int x = 8 * k; x < 8 * k + 8; ++x) {
        const uint8_t* p = im.pixel(x, y);
        REQUIRE(int(p[0]) == blocks[k].r);
        REQUIRE(int(p[1]) == blocks[k].g);
        REQUIRE(int(p[2]) == blocks[k].b);
      }
  }
}

TEST_CASE("JPEG: corrupt and truncated files are errors naming the file, not exit() or gray padding") {
  const auto jpg = read_bytes(kSource / "preprocess" / "rgb_96x64.jpg");
  auto error_of = [](const std::vector<uint8_t>& bytes) {
    try {
      decode_image_memory(bytes.data(), bytes.size(), "x.jpg");
    } catch (const ImageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // Cut in the middle of the scan data: libjpeg would pad with gray and only warn.
  const std::vector<uint8_t> cut(jpg.begin(), jpg.begin() + long(jpg.size() * 2 / 3));
  CHECK(error_of(cut) == "x.jpg: cannot decode image: Premature end of JPEG file");
  // A start-of-image marker followed by garbage.
  std::vector<uint8_t> garbage(300, 0x5a);
  garbage[0] = 0xFF, garbage[1] = 0xD8;
  CHECK(error_of(garbage).rfind("x.jpg: cannot decode image: ", 0) == 0);
  // Only the two-byte marker.
  CHECK(error_of({0xFF, 0xD8}).rfind("x.jpg: cannot decode image: ", 0) == 0);
  // A frame header declaring a zero width.
  CHECK(error_of(jpeg_declaring(0, 64)).rfind("x.jpg: cannot decode image: ", 0) == 0);
  // The intact file still decodes after all that (no error state left behind).
  CHECK(decode_image_memory(jpg.data(), jpg.size(), "x.jpg").width == 96);
}
