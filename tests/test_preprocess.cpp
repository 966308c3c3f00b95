// Image decoding, Pillow-exact resizing and the checkpoints' processors, against fixtures written by
// tools/make_preprocess_fixtures.py (Pillow + transformers' slow image processors).
//
// What "exact" means here, and why each tolerance is what it is:
//   - resize(): identical bytes. It is integer arithmetic on weights computed by the same double formulas
//     as Pillow, so any difference at all is a bug.
//   - preprocess(): from identical uint8 pixels the rescale (float64 then cast) and normalise (float32
//     subtract, divide) are single correctly rounded IEEE operations in both numpy and C++, so the results
//     are bit-identical in practice; the check allows 1e-6 absolute (values are |x| <= 2.7, one float32 ulp
//     there is 2.4e-7), which only a compiler reassociating the expression could ever need.
//   - JPEG decoding: identical bytes. It is libjpeg-turbo, as in PIL, with PIL's settings (islow IDCT,
//     fancy upsampling). Resize and processor checks still start from PIL's decoded pixels (stored in the
//     fixture), so they test the resampler, not the JPEG decoder.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "data/image.h"
#include "data/preprocess.h"
#include "engine/safetensors.h"
#include "tests/temp_dir.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(TESSERA_SOURCE_DIR) / "tests" / "fixtures" / "preprocess";

const SafetensorsFile& expected() {
  static SafetensorsFile f((kFixtures / "expected.safetensors").string());
  return f;
}

// A fixture [H, W, 3] u8 tensor as an Image.
Image image_from(const Tensor& t) {
  REQUIRE(t.dtype() == DType::u8);
  REQUIRE(t.dim() == 3);
  REQUIRE(t.size(2) == 3);
  Image im;
  im.height = int(t.size(0));
  im.width = int(t.size(1));
  const uint8_t* p = t.data<uint8_t>();
  im.rgb.assign(p, p + t.numel());
  return im;
}

std::vector<std::string> names_with_prefix(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& info : expected().tensors())
    if (info.name.rfind(prefix, 0) == 0) out.push_back(info.name);
  return out;
}

std::string between(const std::string& s, size_t from, char stop) {
  const size_t end = s.find(stop, from);
  return s.substr(from, end == std::string::npos ? std::string::npos : end - from);
}

using tessera::testing::TempDir;
std::string tmp(const std::string& name) {
  static TempDir dir;
  return (dir.path / name).string();
}
std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// The exception message of decode_image(path), or "" when it did not throw.
std::string decode_error(const std::string& path) {
  try {
    decode_image(path);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "";
}

// Largest |a - b| over CHW f32 tensors; `sub` subsamples a [3, H, W] output as [:, 3::11, 3::11] to match
// the fixture's subsampled 224 presets.
// Also counts the values that are not bit-identical into *inexact when given.
double max_abs_diff(const Tensor& got, const Tensor& want, bool sub, int64_t* inexact = nullptr) {
  REQUIRE(want.dtype() == DType::f32);
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  const int64_t H = got.size(1), W = got.size(2);
  const int64_t h = want.size(1), wd = want.size(2);
  if (!sub) REQUIRE(got.shape() == want.shape());
  double worst = 0;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < wd; ++x) {
        const int64_t gy = sub ? 3 + 11 * y : y, gx = sub ? 3 + 11 * x : x;
        REQUIRE(gy < H);
        REQUIRE(gx < W);
        const float a = g[(c * H + gy) * W + gx], b = w[(c * h + y) * wd + x];
        worst = std::max(worst, std::fabs(double(a) - double(b)));
        if (inexact && a != b) ++*inexact;
      }
  return worst;
}

int max_pixel_diff(const Image& a, const Tensor& b_hw3, int stride = 1) {
  const uint8_t* b = b_hw3.data<uint8_t>();
  const int64_t bh = b_hw3.size(0), bw = b_hw3.size(1);
  int worst = 0;
  for (int64_t y = 0; y < bh; ++y)
    for (int64_t x = 0; x < bw; ++x)
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::abs(int(a.pixel(int(x * stride), int(y * stride))[c]) -
                                         int(b[(y * bw + x) * 3 + c])));
  return worst;
}

const char* kLossless[] = {"rgb_37x23", "rgba_64x64", "gray_41x30", "graya_20x20",
                           "palette_50x40", "rgb16_27x19", "gray16_15x12"};

std::string fixture_file(const std::string& name) {
  for (const char* ext : {".png", ".jpg"})
    if (fs::exists(kFixtures / (name + ext))) return (kFixtures / (name + ext)).string();
  FAIL("no fixture image for " << name);
  return "";
}

}  // namespace

TEST_CASE("decode: lossless formats give PIL's RGB exactly (gray, gray+alpha, RGBA, palette, 16-bit)") {
  for (const char* name : kLossless) {
    CAPTURE(name);
    const Image im = decode_image(fixture_file(name));
    const Tensor want = expected().get(std::string("decoded/") + name);
    REQUIRE(im.height == want.size(0));
    REQUIRE(im.width == want.size(1));
    REQUIRE(im.rgb.size() == size_t(want.numel()));
    CHECK(max_pixel_diff(im, want) == 0);
  }
  // Gray sources really are replicated to R = G = B (the fixture could not tell a swapped channel from
  // a replicated one if both were wrong the same way).
  const Image g = decode_image(fixture_file("gray_41x30"));
  for (size_t i = 0; i < g.rgb.size(); i += 3) {
    REQUIRE(g.rgb[i] == g.rgb[i + 1]);
    REQUIRE(g.rgb[i] == g.rgb[i + 2]);
  }
}

TEST_CASE("decode: JPEG gives PIL's pixels exactly (gray, 4:2:0 colour)") {
  // The same decoder as PIL (libjpeg-turbo) with the same settings (islow IDCT, fancy upsampling), so any
  // difference is a bug. (stb_image, the decoder before, was off by up to 1 level on the gray fixture and
  // 3 on the 4:2:0 colour one, at chroma edges.)
  for (const std::string name : {"gray_80x56", "rgb_96x64"}) {
    CAPTURE(name);
    const Image im = decode_image(fixture_file(name));
    const Tensor want = expected().get("decoded/" + name);
    REQUIRE(im.height == want.size(0));
    REQUIRE(im.width == want.size(1));
    CHECK(max_pixel_diff(im, want) == 0);
  }
}

TEST_CASE("resize: identical bytes to Pillow (bilinear and bicubic, down, up, one axis, 1x1, odd sizes)") {
  const auto names = names_with_prefix("resize/");
  REQUIRE(names.size() >= 30);
  for (const auto& key : names) {
    CAPTURE(key);
    // resize/<img>/<filter>/<W>x<H>
    const size_t a = key.find('/', 7), b = key.find('/', a + 1);
    const std::string img = key.substr(7, a - 7), filter = key.substr(a + 1, b - a - 1);
    const std::string size = key.substr(b + 1);
    const int w = std::stoi(between(size, 0, 'x')), h = std::stoi(size.substr(size.find('x') + 1));
    const Image src = image_from(expected().get("decoded/" + img));
    const Image out = resize(src, w, h, filter == "bilinear" ? Filter::Bilinear : Filter::Bicubic);
    const Tensor want = expected().get(key);
    REQUIRE(out.width == w);
    REQUIRE(out.height == h);
    size_t mismatches = 0;
    for (size_t i = 0; i < out.rgb.size(); ++i) mismatches += out.rgb[i] != want.data<uint8_t>()[i];
    CHECK_MESSAGE(mismatches == 0, mismatches << " of " << out.rgb.size() << " bytes differ, max |diff| "
                                             << max_pixel_diff(out, want));
  }
}

TEST_CASE("resize: a constant image stays constant, same size is a copy, bad sizes throw") {
  // Normalised weights sum to 2^22 up to a few units of rounding, and the 2^21 rounding offset absorbs
  // that: any value, any size, either filter must come back unchanged.
  for (int v : {0, 1, 128, 254, 255}) {
    Image im(13, 7);
    std::fill(im.rgb.begin(), im.rgb.end(), uint8_t(v));
    for (Filter f : {Filter::Bilinear, Filter::Bicubic})
      for (auto [w, h] : {std::pair{1, 1}, {5, 3}, {40, 9}, {13, 30}, {300, 200}}) {
        const Image out = resize(im, w, h, f);
        for (uint8_t p : out.rgb) REQUIRE(int(p) == v);
      }
  }
  const Image src = image_from(expected().get("decoded/rgb_37x23"));
  CHECK(resize(src, 37, 23, Filter::Bicubic).rgb == src.rgb);
  CHECK_THROWS_AS(resize(src, 0, 5, Filter::Bilinear), ImageError);
  CHECK_THROWS_AS(resize(Image(), 5, 5, Filter::Bilinear), ImageError);
  CHECK_THROWS_AS(crop(src, 30, 0, 8, 5), ImageError);
}

TEST_CASE("resize: pass order of Pillow 13 (vertical first when height shrinks most) and of Pillow 12") {
  // Each single-axis resize is exactly one pass, so the two orders are two compositions of them. 96x64 ->
  // 97x30 shrinks only the height: Pillow 13 goes vertical first (the fixture above confirms that), Pillow
  // 12 horizontal first; the 8-bit intermediate rounds differently, so the results must differ somewhere.
  const Image src = image_from(expected().get("decoded/rgb_96x64"));
  for (Filter f : {Filter::Bilinear, Filter::Bicubic}) {
    CAPTURE(filter_name(f));
    const Image v_then_h = resize(resize(src, 96, 30, f), 97, 30, f);
    const Image h_then_v = resize(resize(src, 97, 64, f), 97, 30, f);
    CHECK(resize(src, 97, 30, f).rgb == v_then_h.rgb);
    CHECK(resize(src, 97, 30, f, PassOrder::Pillow12).rgb == h_then_v.rgb);
    CHECK(v_then_h.rgb != h_then_v.rgb);
    // 37x23 -> 29x40 (height grows): horizontal first in both versions.
    const Image a = image_from(expected().get("decoded/rgb_37x23"));
    CHECK(resize(a, 29, 40, f).rgb == resize(a, 29, 40, f, PassOrder::Pillow12).rgb);
  }
}

TEST_CASE("preprocess: small ViT / CvT configs match transformers' pixel_values") {
  const int sv = std::stoi(expected().metadata().at("small_vit"));
  const int sc = std::stoi(expected().metadata().at("small_cvt"));
  int checked = 0;
  for (const auto& key : names_with_prefix("vit" + std::to_string(sv) + "/")) {
    CAPTURE(key);
    const std::string img = key.substr(key.find('/') + 1);
    const Image src = image_from(expected().get("decoded/" + img));
    const Tensor v = preprocess(src, ProcessorConfig::vit(sv));
    CHECK(v.shape() == Shape{3, sv, sv});
    // Within 1e-6 (see the top of the file) — and in fact bit-identical: the same IEEE operations in the
    // same order. A change that breaks bit-identity (computing in double, folding 1/255 into the std, FMA)
    // stays within 1e-6 but shows up here; fix the arithmetic rather than loosening this.
    int64_t inexact = 0;
    CHECK(max_abs_diff(v, expected().get(key), false, &inexact) <= 1e-6);
    CHECK(inexact == 0);
    const std::string ckey = "cvt" + std::to_string(sc) + "/" + img;
    const Tensor c = preprocess(src, ProcessorConfig::cvt(sc));
    CHECK(c.shape() == Shape{3, sc, sc});
    CHECK(max_abs_diff(c, expected().get(ckey), false, &inexact) <= 1e-6);
    CHECK(inexact == 0);
    ++checked;
  }
  CHECK(checked >= 4);
}

TEST_CASE("preprocess: the checkpoints' 224 presets match transformers (subsampled fixture)") {
  int checked = 0;
  for (const auto& key : names_with_prefix("vit224s/")) {
    CAPTURE(key);
    const std::string img = key.substr(key.find('/') + 1);
    const Image src = image_from(expected().get("decoded/" + img));
    const Tensor v = preprocess(src, Processor::ViT);
    REQUIRE(v.shape() == Shape{3, 224, 224});
    CHECK(max_abs_diff(v, expected().get(key), true) <= 1e-6);
    const Tensor c = preprocess(src, Processor::CvT);
    REQUIRE(c.shape() == Shape{3, 224, 224});
    CHECK(max_abs_diff(c, expected().get("cvt224s/" + img), true) <= 1e-6);
    ++checked;
  }
  CHECK(checked >= 4);
}

TEST_CASE("preprocess: CvT geometry (shortest edge 256, truncated long side, centre crop) and batching") {
  // 300x200 -> short side 256, long int(256*300/200) = 384; crop at left (384-224)//2 = 80, top 16.
  Image im(300, 200);
  for (int y = 0; y < 200; ++y)
    for (int x = 0; x < 300; ++x)
      for (int c = 0; c < 3; ++c) im.pixel(x, y)[c] = uint8_t((x * 7 + y * 3 + c * 50) % 256);
  const ProcessorConfig cfg = ProcessorConfig::cvt();
  const Image r = processor_resize(im, cfg);
  CHECK(r.width == 224);
  CHECK(r.height == 224);
  CHECK(crop(resize(im, 384, 256, Filter::Bicubic), 80, 16, 224, 224).rgb == r.rgb);
  // Portrait 201x333: short 256, long int(256*333/201) = int(424.119...) = 424; top (424-224)//2 = 100.
  Image p(201, 333);
  std::fill(p.rgb.begin(), p.rgb.end(), uint8_t(9));
  p.pixel(100, 160)[0] = 250;
  CHECK(processor_resize(p, cfg).rgb == crop(resize(p, 256, 424, Filter::Bicubic), 16, 100, 224, 224).rgb);

  const Tensor batch = preprocess_batch({im, p, im}, ProcessorConfig::vit());
  REQUIRE(batch.shape() == Shape{3, 3, 224, 224});
  const Tensor one = preprocess(p, Processor::ViT);
  const float* b = batch.data<float>() + 3 * 224 * 224;
  const float* o = one.data<float>();
  bool same = true;
  for (int64_t i = 0; i < one.numel(); ++i) same = same && b[i] == o[i];
  CHECK(same);
  CHECK_THROWS_AS(preprocess_batch({}, cfg), ImageError);
}

TEST_CASE("decode: missing, unreadable, empty, truncated and corrupt files give one clear error") {
  std::string msg = decode_error(tmp("does-not-exist.png"));
  CHECK(msg.find("does-not-exist.png") != std::string::npos);
  CHECK(msg.find("no such file") != std::string::npos);

  fs::create_directories(tmp("a-directory.png"));
  msg = decode_error(tmp("a-directory.png"));
  CHECK(msg.find("is a directory") != std::string::npos);

  write_bytes(tmp("empty.jpg"), {});
  msg = decode_error(tmp("empty.jpg"));
  CHECK(msg.find("empty.jpg: cannot decode image: file is empty") != std::string::npos);

  write_bytes(tmp("garbage.png"), std::vector<uint8_t>(300, 0x5a));
  msg = decode_error(tmp("garbage.png"));
  CHECK(msg.find("garbage.png: cannot decode image: ") != std::string::npos);

  // A PNG cut in half: the header parses, the compressed data ends early.
  const auto png = read_bytes(kFixtures / "rgba_64x64.png");
  REQUIRE(png.size() > 1000);
  write_bytes(tmp("truncated.png"), std::vector<uint8_t>(png.begin(), png.begin() + long(png.size() / 2)));
  msg = decode_error(tmp("truncated.png"));
  CHECK(msg.find("truncated.png: cannot decode image: ") != std::string::npos);

  // A PNG whose IHDR claims width 0 (bytes 16..19, big endian).
  auto zero = png;
  zero[16] = zero[17] = zero[18] = zero[19] = 0;
  write_bytes(tmp("zero.png"), zero);
  msg = decode_error(tmp("zero.png"));
  CHECK(msg.find("zero.png: cannot decode image: ") != std::string::npos);

  // A PNG chunk that declares more bytes than the file holds (1,711,276,092 in 216 bytes, found by
  // fuzz_image: stb allocated 2 GiB for it) is refused before stb reads it, naming the chunk's offset.
  const auto oom = read_bytes(fs::path(TESSERA_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / "image" / "oom-png-idat-length");
  write_bytes(tmp("huge-chunk.png"), oom);
  msg = decode_error(tmp("huge-chunk.png"));
  CHECK(msg.find("huge-chunk.png: cannot decode image: corrupt PNG: a chunk at byte 105 declares 1711276092 bytes, "
                 "past the end of the file") != std::string::npos);
  // The truncated PNG above fails the same way now: its IDAT runs past the cut.
  CHECK(decode_error(tmp("truncated.png")).find("corrupt PNG: a chunk at byte") != std::string::npos);

  // A JPEG cut right after its headers: there is no scan data at all.
  const auto jpg = read_bytes(kFixtures / "rgb_96x64.jpg");
  write_bytes(tmp("truncated.jpg"), std::vector<uint8_t>(jpg.begin(), jpg.begin() + 200));
  msg = decode_error(tmp("truncated.jpg"));
  CHECK(msg.find("truncated.jpg: cannot decode image: ") != std::string::npos);

  // Memory decoding names the source it is given.
  try {
    decode_image_memory(png.data(), 40, "blob");
    FAIL("expected an error");
  } catch (const ImageError& e) {
    CHECK(std::string(e.what()).rfind("blob: cannot decode image: ", 0) == 0);
  }
  // And decodes the same pixels as the file path.
  CHECK(decode_image_memory(png.data(), png.size()).rgb == decode_image(fixture_file("rgba_64x64")).rgb);
}

TEST_CASE("real images: brain-tumour MRI JPEGs through both processors (skipped without the data set)") {
  const fs::path dataset = fs::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "datasets" / "brain-tumor-mri";
  const int count = std::stoi(expected().metadata().at("real_count"));
  if (!fs::exists(dataset) || count == 0) {
    MESSAGE("skipped: no data set at " << dataset.string());
    return;
  }
  for (int k = 0; k < count; ++k) {
    const std::string rel = expected().metadata().at("real/" + std::to_string(k));
    CAPTURE(rel);
    const fs::path file = dataset / rel;
    if (!fs::exists(file)) {
      MESSAGE("skipped: " << file.string() << " is not there");
      continue;
    }
    const Image im = decode_image(file.string());
    const Tensor size = expected().get("real/" + std::to_string(k) + "/size");
    REQUIRE(im.height == size.data<int64_t>()[0]);
    REQUIRE(im.width == size.data<int64_t>()[1]);
    const std::string key = "real/" + std::to_string(k) + "/";
    const int decode_diff = max_pixel_diff(im, expected().get(key + "decoded_s16"), 16);
    // The stored outputs were computed from PIL's (libjpeg-turbo's) decode, which is ours too, so the decode
    // check is d = 0 on the stored subsample, and the outputs must match to float rounding (1e-6, top of the
    // file). The bounds are written for a decode off by d levels everywhere, as they were for stb_image
    // (d = 1):
    //   one pass computes round(sum w_i p_i); inputs off by <= d move the exact sum by <= S·d, S = sum|w_i|,
    //   so the rounded (monotone) result moves by <= ceil(S·d) levels. Bilinear: S = 1 -> d after both
    //   passes. Bicubic: S <= 1.25 (taps -1/16, 9/16, 9/16, -1/16 at worst) -> ceil(1.25·ceil(1.25·d)) = 3.
    //   Normalising divides by 255·std: ViT std 0.5, CvT smallest std 0.224.
    const int d = 0;
    const double vit_levels = d;
    const double cvt_levels = std::ceil(1.25 * std::ceil(1.25 * d));
    const double vit_tol = vit_levels / 255.0 / 0.5 + 1e-6, cvt_tol = cvt_levels / 255.0 / 0.224 + 1e-6;
    const double dv = max_abs_diff(preprocess(im, Processor::ViT), expected().get(key + "vit224s"), true);
    const double dc = max_abs_diff(preprocess(im, Processor::CvT), expected().get(key + "cvt224s"), true);
    MESSAGE(rel << ": decode max |diff| vs PIL (subsampled) " << decode_diff << "; ViT " << dv << " (bound "
                << vit_tol << "), CvT " << dc << " (bound " << cvt_tol << ")");
    CHECK(decode_diff <= d);
    CHECK(dv <= vit_tol);
    CHECK(dc <= cvt_tol);
  }
}

namespace {

// A gray picture whose levels (0..122) leave room for v → 2v + 10 without clipping.
Image gray_ramp(int w, int h) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) std::fill_n(im.pixel(x, y), 3, uint8_t((x * 37 + y * 11 + x * y) % 123));
  return im;
}

// A processor that keeps a w × h image as it is (same-size squash is a copy), with ViT's mean/std 0.5.
ProcessorConfig same_size(int w, int h) {
  ProcessorConfig c = ProcessorConfig::vit();
  c.width = w;
  c.height = h;
  return c;
}

}  // namespace

TEST_CASE("preprocess: one channel is Pillow's luma, normalised with mean[0] and std[0]") {
  Image im(37, 23);
  for (int y = 0; y < 23; ++y)
    for (int x = 0; x < 37; ++x)
      for (int c = 0; c < 3; ++c) im.pixel(x, y)[c] = uint8_t((x * 7 + y * 13 + c * 71 + x * y * c) % 256);
  // (0, 14, 213): Pillow's rgb2l gives (14·38470 + 213·7471 + 2^15) >> 16 = 32, where the decimal
  // (299 R + 587 G + 114 B + 500) / 1000 would give 33 — pins the fixed-point formula.
  uint8_t* p = im.pixel(3, 4);
  p[0] = 0, p[1] = 14, p[2] = 213;
  ProcessorConfig cfg = same_size(37, 23);
  cfg.channels = 1;
  cfg.mean = {0.25, 0.9, 0.9};  // only the first mean and std apply
  cfg.std = {0.6, 9.0, 9.0};
  const Tensor t = preprocess(im, cfg);
  REQUIRE(t.shape() == Shape{1, 23, 37});
  // The output is float32 (x − m) / s from float32 x = L/255, m, s: five roundings (x, m, s, the
  // difference, the quotient), each a relative 2^-24 of a term of size at most (1 + m) / s.
  const double tol = 5 * std::ldexp(1.0, -24) * (1 + 0.25) / 0.6;
  double worst = 0;
  for (int y = 0; y < 23; ++y)
    for (int x = 0; x < 37; ++x) {
      const uint8_t* q = im.pixel(x, y);
      const double L = double((uint32_t(q[0]) * 19595 + uint32_t(q[1]) * 38470 + uint32_t(q[2]) * 7471 + 32768) >> 16);
      worst = std::max(worst, std::abs(double(t.data<float>()[y * 37 + x]) - (L / 255 - 0.25) / 0.6));
    }
  CHECK(worst <= tol);
  CHECK(std::abs(double(t.data<float>()[4 * 37 + 3]) - (32 / 255.0 - 0.25) / 0.6) <= tol);
  // A gray pixel's luma is its level: channels = 1 of a gray image is channel 0 of channels = 3.
  const Image g = gray_ramp(37, 23);
  const Tensor one = preprocess(g, cfg);
  ProcessorConfig three = cfg;
  three.channels = 3;
  const Tensor all = preprocess(g, three);
  CHECK(std::equal(one.data<float>(), one.data<float>() + one.numel(), all.data<float>()));

  const Tensor batch = preprocess_batch({im, g}, cfg);
  REQUIRE(batch.shape() == Shape{2, 1, 23, 37});
  CHECK(std::equal(t.data<float>(), t.data<float>() + t.numel(), batch.data<float>()));
  cfg.channels = 2;
  CHECK_THROWS_WITH_AS(preprocess(im, cfg), "processor config: channels must be 1 or 3, got 2", std::invalid_argument);
  CHECK_THROWS_AS(preprocess_batch({im}, cfg), std::invalid_argument);
  std::vector<float> buf(37 * 23 * 3);
  CHECK_THROWS_AS(preprocess_into(im, cfg, buf.data()), std::invalid_argument);
}

TEST_CASE("preprocess: per-image standardisation - mean 0, std 1, planes equal, affine-invariant") {
  const Image g = gray_ramp(50, 40);
  for (int channels : {1, 3}) {
    CAPTURE(channels);
    ProcessorConfig cfg = same_size(50, 40);
    cfg.channels = channels;
    cfg.per_image_standardize = true;
    const Tensor z = preprocess(g, cfg);
    REQUIRE(z.shape() == Shape{channels, 40, 50});
    const float* v = z.data<float>();
    const size_t n = size_t(z.numel()), plane = 40 * 50;
    // Each float is the double z rounded: z(1 + δ), |δ| <= 2^-24. So the float mean is off from the exact
    // 0 by at most 2^-24 · mean|z| <= 2^-24 · rms z = 2^-24, the mean square from 1 by at most
    // (1 + 2^-24)² − 1 ≈ 2^-23, the std (its root) by about 2^-24; plus ~1e-12 of double summation.
    double sum = 0, sum2 = 0;
    for (size_t i = 0; i < n; ++i) sum += v[i];
    const double mean = sum / double(n);
    for (size_t i = 0; i < n; ++i) sum2 += (v[i] - mean) * (v[i] - mean);
    const double sd = std::sqrt(sum2 / double(n)), u = std::ldexp(1.0, -24);
    CHECK(std::abs(mean) <= u + 1e-12);
    CHECK(std::abs(sd - 1) <= 1.001 * u + 1e-12);
    for (int c = 1; c < channels; ++c) CHECK(std::equal(v, v + plane, v + size_t(c) * plane));
    // Against the definition computed here from the levels (double): the same value rounded to float.
    double m = 0, s2 = 0;
    for (size_t i = 0; i < plane; ++i) m += g.rgb[3 * i] / 255.0;
    m /= double(plane);
    for (size_t i = 0; i < plane; ++i) s2 += (g.rgb[3 * i] / 255.0 - m) * (g.rgb[3 * i] / 255.0 - m);
    const double s = std::sqrt(s2 / double(plane));
    double worst = 0;
    for (size_t i = 0; i < plane; ++i) worst = std::max(worst, std::abs(v[i] - (g.rgb[3 * i] / 255.0 - m) / s));
    // |z| < 4 here, so half a float ulp is at most 2^-23; the two double computations agree to ~1e-15.
    CHECK(worst <= 2 * u + 1e-12);
  }

  // A colour image: one mean and std over all three planes together, not one per plane (which would
  // recolour it). Same bound as above (|z| < 4).
  {
    Image col(30, 20);
    for (int y = 0; y < 20; ++y)
      for (int x = 0; x < 30; ++x)
        for (int c = 0; c < 3; ++c) col.pixel(x, y)[c] = uint8_t(40 * c + (x * 3 + y * 5 + c * x) % 90);
    ProcessorConfig cfg = same_size(30, 20);
    cfg.per_image_standardize = true;
    const Tensor z = preprocess(col, cfg);
    double m = 0, s2 = 0;
    for (uint8_t q : col.rgb) m += q / 255.0;
    m /= double(col.rgb.size());
    for (uint8_t q : col.rgb) s2 += (q / 255.0 - m) * (q / 255.0 - m);
    const double s = std::sqrt(s2 / double(col.rgb.size()));
    double worst = 0;
    for (int c = 0; c < 3; ++c)
      for (size_t i = 0; i < 600; ++i)
        worst = std::max(worst, std::abs(z.data<float>()[size_t(c) * 600 + i] - (col.rgb[3 * i + size_t(c)] / 255.0 - m) / s));
    CHECK(worst <= 2 * std::ldexp(1.0, -24) + 1e-12);
  }

  // v → 2v + 10 (no clipping: levels 0..122 → 10..254) changes x to 2x + 10/255, m to 2m + 10/255, s to 2s:
  // z is unchanged. Without resampling only the final float rounding of two doubles equal up to ~1e-14
  // can differ, by one float ulp <= 2^-23 |z|.
  Image g2 = g;
  for (auto& q : g2.rgb) q = uint8_t(2 * q + 10);
  ProcessorConfig cfg = same_size(50, 40);
  cfg.per_image_standardize = true;
  const Tensor a = preprocess(g, cfg), b = preprocess(g2, cfg);
  int bad = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double za = a.data<float>()[i], zb = b.data<float>()[i];
    bad += std::abs(za - zb) > std::ldexp(std::abs(za), -23) + 1e-12;
  }
  CHECK(bad == 0);

  // Through a bilinear resize (50×40 → 32×32) each output level is rounded to 8 bits in each of two passes,
  // so the transformed image's level r' is not exactly 2r + 10. A pass computes round(sum w_i p_i) with
  // w_i >= 0 summing to 1: inputs off by <= 1 move the sum by <= 1. First pass: |a' − (2a + 10)| <= 1
  // (2 · the rounding of a, 1/2 each, plus the rounding of a', 1/2, integer). Second: the exact sum moves by
  // <= 1 from the first pass plus 1 from doubling r's rounding, plus 1/2 for rounding r': <= 2 levels.
  // In rescaled units e = 2/255: with x' = 2x + c + ε, |ε| <= e, the centred values move by <= 2e and the
  // population std s' = rms of them moves from 2s by <= rms(ε) <= e (triangle inequality), so
  //   |z' − z| = |(2d + η)/s' − 2d/(2s)| <= |z| e / s' + 2e / s', s' >= 2s − e,
  // plus a float rounding of each z (2^-24 |z| per side).
  cfg = ProcessorConfig::vit(32);
  cfg.per_image_standardize = true;
  const Image r = processor_resize(g, cfg), r2 = processor_resize(g2, cfg);
  int level_bad = 0;
  for (size_t i = 0; i < r.rgb.size(); ++i) level_bad += std::abs(int(r2.rgb[i]) - (2 * int(r.rgb[i]) + 10)) > 2;
  CHECK(level_bad == 0);  // the 8-bit bound the tolerance rests on
  double m = 0, s2 = 0;
  for (uint8_t q : r.rgb) m += q / 255.0;
  m /= double(r.rgb.size());
  for (uint8_t q : r.rgb) s2 += (q / 255.0 - m) * (q / 255.0 - m);
  const double s = std::sqrt(s2 / double(r.rgb.size())), e = 2 / 255.0, sp = 2 * s - e;
  const Tensor c = preprocess(g, cfg), d = preprocess(g2, cfg);
  double worst = 0, worst_ratio = 0;
  for (int64_t i = 0; i < c.numel(); ++i) {
    const double zc = c.data<float>()[i], zd = d.data<float>()[i];
    const double bound = (std::abs(zc) + 2) * e / sp + std::ldexp(2 * std::abs(zc) + 1, -24);
    worst = std::max(worst, std::abs(zc - zd));
    worst_ratio = std::max(worst_ratio, std::abs(zc - zd) / bound);
  }
  MESSAGE("standardised through a resize: max |z' - z| " << worst << ", at most " << worst_ratio
                                                         << " of the derived bound");
  CHECK(worst_ratio <= 1);
  // Without standardisation the same change moves the values by about 2x + 10/255 — far beyond that bound.
  cfg.per_image_standardize = false;
  CHECK(std::abs(preprocess(g2, cfg).data<float>()[0] - preprocess(g, cfg).data<float>()[0]) > 0.05);
}

TEST_CASE("preprocess: tessera_per_image_standardize in preprocessor_config.json") {
  // Unset: exactly the keys transformers writes, so the file stays what it was.
  for (const ProcessorConfig& base : {ProcessorConfig::vit(), ProcessorConfig::cvt()}) {
    const nlohmann::json j = processor_to_json(base);
    CHECK_FALSE(j.contains("tessera_per_image_standardize"));
    ProcessorConfig one = base;
    one.channels = 1;  // not written: the model config carries the channel count
    CHECK(processor_to_json(one).dump() == j.dump());
    const ProcessorConfig back = processor_from_json(j, "a.json");
    CHECK_FALSE(back.per_image_standardize);
    CHECK(back.channels == 3);
    CHECK(processor_to_json(back).dump() == j.dump());

    ProcessorConfig on = base;
    on.per_image_standardize = true;
    const nlohmann::json k = processor_to_json(on);
    CHECK(k.at("tessera_per_image_standardize") == true);
    nlohmann::json without = k;
    without.erase("tessera_per_image_standardize");
    CHECK(without.dump() == j.dump());  // nothing else changes
    CHECK(processor_from_json(k, "b.json").per_image_standardize);
    CHECK(processor_to_json(processor_from_json(k, "b.json")).dump() == k.dump());
    nlohmann::json off = j;
    off["tessera_per_image_standardize"] = false;
    CHECK_FALSE(processor_from_json(off, "c.json").per_image_standardize);
  }
  for (const nlohmann::json& wrong : {nlohmann::json("yes"), nlohmann::json(1), nlohmann::json(nullptr)}) {
    nlohmann::json j = processor_to_json(ProcessorConfig::cvt());
    j["tessera_per_image_standardize"] = wrong;
    CAPTURE(wrong.dump());
    try {
      processor_from_json(j, "run/checkpoint/preprocessor_config.json");
      FAIL("expected an error");
    } catch (const std::runtime_error& e) {
      const std::string msg = e.what();
      CHECK(msg.rfind("run/checkpoint/preprocessor_config.json: ", 0) == 0);
      CHECK(msg.find("tessera_per_image_standardize") != std::string::npos);
    }
  }
}

TEST_CASE("preprocess: tessera_crop_foreground and tessera_equalize round-trip, and only they change") {
  const nlohmann::json j = processor_to_json(ProcessorConfig::cvt(64));
  for (auto [key, flag] : {std::pair{"tessera_crop_foreground", &ProcessorConfig::crop_foreground},
                           std::pair{"tessera_equalize", &ProcessorConfig::equalize}}) {
    CAPTURE(key);
    CHECK_FALSE(j.contains(key));
    ProcessorConfig on = ProcessorConfig::cvt(64);
    on.*flag = true;
    nlohmann::json k = processor_to_json(on);
    CHECK(k.at(key) == true);
    CHECK(processor_from_json(k, "p.json").*flag);
    k.erase(key);
    CHECK(k.dump() == j.dump());
    k[key] = "yes";
    const std::string complaint = std::string(key) + " must be true or false";
    CHECK_THROWS_WITH(processor_from_json(k, "p.json"), doctest::Contains(complaint.c_str()));
  }
}

TEST_CASE("preprocess: equalize gives Pillow's ImageOps.equalize exactly, and comes after the crop") {
  // Every decoded fixture image, and edge cases: one level, two levels, step 0, levels clipped at 255.
  const SafetensorsFile eq((kFixtures / "equalize.safetensors").string());
  int cases = 0;
  for (const auto& info : eq.tensors()) {
    if (info.name.rfind("input/", 0) != 0) continue;
    const std::string name = info.name.substr(6);
    CAPTURE(name);
    const Image in = image_from(eq.get(info.name));
    CHECK(equalize(in).rgb == image_from(eq.get("equalized/" + name)).rgb);
    ++cases;
  }
  CHECK(cases >= 13);
  // In the processor: the crop, the equalisation, then the resize.
  Image im(40, 30);
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 40; ++x) std::fill_n(im.pixel(x, y), 3, uint8_t(x >= 10 && x < 30 && y >= 5 ? 40 + x + y : 0));
  ProcessorConfig cfg = ProcessorConfig::vit(12);
  cfg.crop_foreground = cfg.equalize = true;
  const Image expect = resize(equalize(crop_to_foreground(im)), 12, 12, cfg.filter, cfg.pass_order);
  CHECK(processor_resize(im, cfg).rgb == expect.rgb);
  CHECK(expect.rgb != resize(crop_to_foreground(equalize(im)), 12, 12, cfg.filter, cfg.pass_order).rgb);
  cfg.crop_foreground = false;
  CHECK(processor_resize(im, cfg).rgb == resize(equalize(im), 12, 12, cfg.filter, cfg.pass_order).rgb);
}

TEST_CASE("preprocess: crop_to_foreground takes the square around the head, ignoring stray pixels") {
  // A 200×120 black frame with a gray 60 (wide) × 40 (tall) "head" at x 100..159, y 30..69, one stray
  // bright pixel (a burnt-in label's dot) far away, and faint noise under a tenth of the head's level.
  Image im(200, 120);
  auto paint = [&](int x, int y, uint8_t v) { std::fill_n(im.pixel(x, y), 3, v); };
  for (int y = 0; y < 120; ++y)
    for (int x = 0; x < 200; ++x) paint(x, y, uint8_t((x * 7 + y * 3) % 9));  // noise 0..8 < 120 / 10
  for (int y = 30; y < 70; ++y)
    for (int x = 100; x < 160; ++x) paint(x, y, 120);
  paint(5, 110, 255);  // one pixel: under 1 % of a row or column
  Image c = crop_to_foreground(im);
  // The box is 60 × 40: a 60-pixel square centred on it (x 100..159, y 20..79).
  REQUIRE(c.width == 60);
  REQUIRE(c.height == 60);
  CHECK(c.pixel(0, 10)[0] == 120);   // (100, 30): the head's top-left corner
  CHECK(c.pixel(59, 49)[0] == 120);  // (159, 69): its bottom-right corner
  CHECK(c.pixel(0, 9)[0] == im.pixel(100, 29)[0]);  // the row above it, black padding from the frame
  // A box at the border: the square is moved inside the image, not padded.
  Image edge(100, 100);
  for (int y = 0; y < 30; ++y)
    for (int x = 80; x < 100; ++x) std::fill_n(edge.pixel(x, y), 3, uint8_t(200));
  Image e = crop_to_foreground(edge);
  CHECK(e.width == 30);
  CHECK(e.pixel(29, 0)[0] == 200);  // (99, 0)
  CHECK(e.pixel(10, 0)[0] == 200);  // (80, 0): the square spans x 70..99
  CHECK(e.pixel(9, 0)[0] == 0);
  // All black: unchanged. A foreground wider than the image is tall: limited to the shorter side.
  CHECK(crop_to_foreground(Image(17, 9)).width == 17);
  Image wide(50, 10);
  std::fill(wide.rgb.begin(), wide.rgb.end(), uint8_t(90));
  CHECK(crop_to_foreground(wide).width == 10);
  // In the processor: the crop first, then the resize.
  ProcessorConfig cfg = ProcessorConfig::vit(16);
  cfg.crop_foreground = true;
  CHECK(processor_resize(im, cfg).rgb == resize(c, 16, 16, cfg.filter, cfg.pass_order).rgb);
}
