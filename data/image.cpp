// Image decoding (libjpeg-turbo for JPEG, stb_image for the rest) and Pillow-exact resampling. See image.h
// for the contract.
//
// The resampler follows the algorithm of Pillow 13.0's libImaging/Resample.c (ImagingResampleInner and the 8bpc
// passes); it is written from the description, step for step, because "identical pixels" means identical
// arithmetic: the same double-precision weight formulas in the same order, the same rounding to 22-bit
// fixed point, the same integer accumulation and clipping.
#include "data/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>  // before jpeglib.h, which uses FILE
#include <cstring>
#include <limits>

#include <jerror.h>
#include <jpeglib.h>

// The one definition of stb_image in the engine, for every format but JPEG (libjpeg-turbo's, below, is the
// decoder Pillow uses). HDR/PIC are left out: stbi_load would tone-map HDR to 8 bits with a gamma curve no
// image processor uses, and PIC (Softimage) is not a format anyone feeds a classifier. stbi_load's own file
// I/O is not used (we read the bytes ourselves, after the limits, for clear errors).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_JPEG
#define STBI_NO_HDR
#define STBI_NO_PIC
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
// Debian's stb_image 2.27 copies a zero-length PNG chunk with memcpy(NULL, src, 0) (found by fuzz_image:
// tests/fuzz/corpus/image/png-empty-idat.png): harmless on glibc, yet undefined behaviour, which UBSan
// rightly stops on. stb's code is not ours to change: inside it, memcpy is this wrapper, which skips
// empty copies.
static void* stb_memcpy(void* to, const void* from, size_t n) { return n ? std::memcpy(to, from, n) : to; }
#define memcpy stb_memcpy
#include <stb_image.h>
#undef memcpy

// Pillow is compiled without FMA contraction (x86-64 baseline), and the weights must round exactly like
// its doubles do: a fused multiply-add in the filter polynomials or the center computation could move a
// weight by one ulp and, rarely, a fixed-point coefficient by one. -march=native plus GNU mode would allow
// contraction, so switch it off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace tessera {

Image::Image(int w, int h) : width(w), height(h) {
  if (w <= 0 || h <= 0)
    throw ImageError("Image: size must be positive, got " + std::to_string(w) + "x" + std::to_string(h));
  rgb.assign(size_t(w) * size_t(h) * 3, 0);
}

// ---------------------------------------------------------------------------------------------------------
// decoding

namespace {

[[noreturn]] void cannot_decode(const std::string& name, const std::string& why) {
  throw ImageError(name + ": cannot decode image: " + why);
}

// The header's dimensions, before any pixel is decoded or allocated.
void check_dimensions(const std::string& name, int64_t w, int64_t h, const ImageLimits& limits) {
  const std::string size = std::to_string(w) + "x" + std::to_string(h);
  if (w <= 0 || h <= 0) cannot_decode(name, "zero size (" + size + ")");
  if (w * h > limits.max_pixels)
    cannot_decode(name, size + " = " + std::to_string(w * h) + " pixels is over the limit of " +
                            std::to_string(limits.max_pixels) + " (a decompression bomb?)");
}

// libjpeg reports a fatal error by calling error_exit, whose default is exit(). Here it keeps the message
// and longjmps back to jpeg_call, which turns it into an ImageError.
struct JpegError {
  jpeg_error_mgr mgr;  // first: libjpeg hands the callbacks a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  cinfo->err->format_message(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (level -1) about recoverable damage, such as stray bytes before a marker, are ignored as Pillow
// ignores them, and trace messages (level >= 0) are never wanted. The data ending before the image is
// complete is an error: libjpeg would pad the rest with gray, Pillow refuses the truncated file.
void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_error_exit(cinfo);
}

// Runs `f`, a few libjpeg calls, with the jump target of its errors set here: false when one failed.
// Functions that call setjmp are never inlined, and `f` holds no object with a destructor, so the
// longjmp skips only libjpeg's C frames and f's.
template <class F>
bool jpeg_call(JpegError& err, F&& f) {
  if (setjmp(err.jump)) return false;
  f();
  return true;
}

// Pillow's CMYK -> RGB (libImaging/Convert.c cmyk2rgb) of libjpeg's CMYK output, which is inverted as
// Adobe writes it (Pillow reads it as "CMYK;I", inverted too): c = 255 - raw, and R = (255 - k) - c (255 - k)
// / 255 with Pillow's rounding of the product.
void cmyk_row_to_rgb(const uint8_t* in, uint8_t* out, int width) {
  auto muldiv255 = [](int a, int b) {
    const int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
  };
  for (int x = 0; x < width; ++x, in += 4, out += 3) {
    const int nk = in[3];  // 255 - k
    for (int c = 0; c < 3; ++c) out[c] = uint8_t(nk - muldiv255(255 - in[c], nk));
  }
}

// The settings are Pillow's (integer "islow" IDCT, fancy upsampling), so the pixels are Pillow's too.
Image decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const ImageLimits& limits) {
  jpeg_decompress_struct cinfo;
  std::memset(&cinfo, 0, sizeof cinfo);  // jpeg_destroy below is safe even if create fails
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_emit_message;
  struct Destroy {
    jpeg_decompress_struct* cinfo;
    ~Destroy() { jpeg_destroy_decompress(cinfo); }
  } destroy{&cinfo};
  const auto fail = [&] { cannot_decode(name, err.message); };

  if (!jpeg_call(err, [&] {
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
        jpeg_read_header(&cinfo, TRUE);
      }))
    fail();
  check_dimensions(name, cinfo.image_width, cinfo.image_height, limits);
  // Gray and YCbCr/RGB come out as RGB (libjpeg replicates gray, as convert("RGB") does); CMYK and YCCK
  // as CMYK, converted below.
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  if (!jpeg_call(err, [&] { jpeg_start_decompress(&cinfo); })) fail();
  if (cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height ||
      cinfo.output_components != (cmyk ? 4 : 3))  // libjpeg never does this unscaled; all below relies on it
    cannot_decode(name, "decoder produced " + std::to_string(cinfo.output_width) + "x" +
                            std::to_string(cinfo.output_height) + "x" + std::to_string(cinfo.output_components));
  Image out(int(cinfo.output_width), int(cinfo.output_height));
  std::vector<uint8_t> cmyk_row(cmyk ? size_t(out.width) * 4 : 0);
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = int(cinfo.output_scanline);
    JSAMPROW row = cmyk ? cmyk_row.data() : out.pixel(0, y);
    if (!jpeg_call(err, [&] { jpeg_read_scanlines(&cinfo, &row, 1); })) fail();
    if (cmyk) cmyk_row_to_rgb(cmyk_row.data(), out.pixel(0, y), out.width);
  }
  // No jpeg_finish_decompress: what follows the last scan line (normally just the end marker) cannot change
  // the pixels, and Pillow does not require it either.
  return out;
}

// stb's PNG reader grows its buffer to a chunk's declared length before reading the chunk, so a few hundred
// bytes that declare a 1.7 GB IDAT chunk made it allocate 2 GiB (found by fuzz_image). A PNG's chunks, walked
// as stb walks them (length, type, data, CRC) up to IEND, must each fit in the file; then stb's buffer stays
// within twice the file's size.
void check_png_chunks(const uint8_t* data, size_t size, const std::string& name) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size < 8 || std::memcmp(data, kSignature, 8) != 0) return;  // not a PNG
  for (size_t at = 8; at + 8 <= size;) {
    const uint64_t length = uint64_t(data[at]) << 24 | uint64_t(data[at + 1]) << 16 | uint64_t(data[at + 2]) << 8 |
                            uint64_t(data[at + 3]);
    if (length + 12 > size - at)
      cannot_decode(name, "corrupt PNG: a chunk at byte " + std::to_string(at) + " declares " +
                              std::to_string(length) + " bytes, past the end of the file");
    if (std::memcmp(data + at + 4, "IEND", 4) == 0) return;
    at += size_t(length) + 12;
  }
}

Image decode_stb(const uint8_t* data, size_t size, const std::string& name, const ImageLimits& limits) {
  if (size > size_t(std::numeric_limits<int>::max())) cannot_decode(name, "file larger than 2 GiB");
  check_png_chunks(data, size, name);
  int w = 0, h = 0, channels = 0;
  if (!stbi_info_from_memory(data, int(size), &w, &h, &channels)) cannot_decode(name, stbi_failure_reason());
  check_dimensions(name, w, h, limits);
  // req_comp = 3: stb converts gray -> RGB (replicate), gray+alpha and RGBA -> RGB (drop alpha), palette ->
  // RGB; 16-bit samples become 8-bit by keeping the high byte (stbi__convert_16_to_8 is `v >> 8`).
  int w2 = 0, h2 = 0, c2 = 0;
  stbi_uc* pixels = stbi_load_from_memory(data, int(size), &w2, &h2, &c2, 3);
  if (!pixels) cannot_decode(name, stbi_failure_reason());
  Image out;
  out.width = w2;
  out.height = h2;
  out.rgb.assign(pixels, pixels + size_t(w2) * size_t(h2) * 3);
  stbi_image_free(pixels);
  if (w2 != w || h2 != h)  // stb never does this; checked because everything after relies on it
    cannot_decode(name, "header says " + std::to_string(w) + "x" + std::to_string(h) + ", decoder produced " +
                            std::to_string(w2) + "x" + std::to_string(h2));
  return out;
}

[[noreturn]] void cannot_read(const std::string& path, const std::string& why) {
  throw ImageError(path + ": cannot read image: " + why);
}

// What a file that is not a regular one is, for the error message.
std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "is a directory";
  if (S_ISCHR(mode)) return "not a regular file (a character device)";
  if (S_ISBLK(mode)) return "not a regular file (a block device)";
  if (S_ISFIFO(mode)) return "not a regular file (a FIFO)";
  if (S_ISSOCK(mode)) return "not a regular file (a socket)";
  return "not a regular file";
}

// Refuses a file that is not regular or is over the size limit, from its metadata alone.
void check_file(const std::string& path, const struct stat& st, const ImageLimits& limits) {
  if (!S_ISREG(st.st_mode)) cannot_read(path, file_kind(st.st_mode));
  if (uint64_t(st.st_size) > limits.max_file_bytes)
    cannot_read(path, "file is " + std::to_string(st.st_size) + " bytes, over the limit of " +
                          std::to_string(limits.max_file_bytes));
}

}  // namespace

Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name, const ImageLimits& limits) {
  if (size == 0) cannot_decode(name, "file is empty");
  // Every JPEG starts with the start-of-image marker FF D8; the rest is stb's, which looks at its own magic.
  if (size >= 2 && data[0] == 0xFF && data[1] == 0xD8) return decode_jpeg(data, size, name, limits);
  return decode_stb(data, size, name, limits);
}

std::string read_image_file(const std::string& path, const ImageLimits& limits) {
  // The path's metadata first: a device (/dev/zero never ends), a FIFO (opening it waits for a writer) or
  // an oversized file is refused before it is opened.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    cannot_read(path, errno == ENOENT || errno == ENOTDIR ? "no such file" : std::strerror(errno));
  check_file(path, st, limits);
  // O_NONBLOCK: were the path swapped for a FIFO since, opening it must not wait; fstat then sees what was
  // really opened.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) cannot_read(path, std::strerror(errno));
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  if (::fstat(fd, &st) != 0) cannot_read(path, std::strerror(errno));
  check_file(path, st, limits);
  // At most the size fstat gave, which is within the limit: a file growing meanwhile cannot make it more.
  std::string bytes(size_t(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) cannot_read(path, std::strerror(errno));
    if (n == 0) break;  // shrank meanwhile: what is there is the file
    got += size_t(n);
  }
  bytes.resize(got);
  return bytes;
}

Image decode_image(const std::string& path, const ImageLimits& limits) {
  const std::string bytes = read_image_file(path, limits);
  return decode_image_memory(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path, limits);
}

// ---------------------------------------------------------------------------------------------------------
// Pillow-exact resampling

const char* filter_name(Filter f) { return f == Filter::Bilinear ? "bilinear" : "bicubic"; }

namespace {

// Pillow's filters, same expressions (and so the same rounding) as Resample.c.
double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}
double bicubic_filter(double x) {
  constexpr double a = -0.5;  // Pillow's (and Keys') choice; PyTorch/OpenCV use -0.75
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// 8 bits of result, 2 bits of headroom for negative lobes and sums above 1, in a 32-bit int.
constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output pixel: the first input index, the number of taps, and ksize fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out_size * ksize]
};

// precompute_coeffs + normalize_coeffs_8bpc for the full box [0, in_size).
Coefficients precompute(int in_size, int out_size, Filter filter) {
  double (*fn)(double) = filter == Filter::Bilinear ? bilinear_filter : bicubic_filter;
  const double filter_support = filter == Filter::Bilinear ? 1.0 : 2.0;
  // Pillow's box is float; (in1 - in0) is exact for any size below 2^24 (stb's limit), then widened.
  const double scale = double(float(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;  // widen the kernel only when downscaling
  const double support = filter_support * filterscale;
  Coefficients c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.weights.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> k(size_t(c.ksize));
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    double ww = 0.0;
    // (int) truncates toward zero, as in C: for a slightly negative argument this gives 0, not -1.
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double w = fn((x + xmin - center + 0.5) * inv_filterscale);
      k[size_t(x)] = w;
      ww += w;
    }
    if (ww != 0.0)
      for (int x = 0; x < xmax; ++x) k[size_t(x)] /= ww;
    for (int x = 0; x < xmax; ++x) {  // round half away from zero to 22 fractional bits
      const double v = k[size_t(x)];
      c.weights[size_t(xx) * size_t(c.ksize) + size_t(x)] =
          v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

// Pillow's clip8: (sum >> 22) clipped to [0, 255]. The sum starts at 1 << 21, so this rounds half up.
// 64-bit accumulation gives the same result as Pillow's int whenever the int does not overflow (it cannot
// with normalised weights: |sum| <= 255 · 1.1 · 2^22 < 2^31) and keeps UBSan quiet by construction.
inline uint8_t clip8(int64_t ss) {
  const int64_t v = ss >> kPrecisionBits;  // arithmetic shift (C++20), as Pillow's on its targets
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Pillow's horizontal 8bpc pass: output rows yy = 0..rows-1 from input rows yy + row_offset.
Image horizontal_pass(const Image& in, int row_offset, int rows, const Coefficients& horiz) {
  const int out_w = int(horiz.first.size());
  Image out(out_w, rows);
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* line_in = in.pixel(0, yy + row_offset);
    uint8_t* line_out = out.pixel(0, yy);
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = horiz.first[size_t(xx)], xmax = horiz.count[size_t(xx)];
      const int32_t* k = &horiz.weights[size_t(xx) * size_t(horiz.ksize)];
      int64_t ss0 = 1 << (kPrecisionBits - 1), ss1 = ss0, ss2 = ss0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = line_in + size_t(x + xmin) * 3;
        ss0 += int64_t(p[0]) * k[x];
        ss1 += int64_t(p[1]) * k[x];
        ss2 += int64_t(p[2]) * k[x];
      }
      line_out[size_t(xx) * 3 + 0] = clip8(ss0);
      line_out[size_t(xx) * 3 + 1] = clip8(ss1);
      line_out[size_t(xx) * 3 + 2] = clip8(ss2);
    }
  }
  return out;
}

// Pillow's vertical 8bpc pass: every column, output row yy from input rows first[yy] + 0..count[yy]-1.
Image vertical_pass(const Image& in, int out_h, const Coefficients& vert) {
  Image out(in.width, out_h);
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = vert.first[size_t(yy)], ymax = vert.count[size_t(yy)];
    const int32_t* k = &vert.weights[size_t(yy) * size_t(vert.ksize)];
    uint8_t* line_out = out.pixel(0, yy);
    for (int xx = 0; xx < in.width; ++xx) {
      int64_t ss0 = 1 << (kPrecisionBits - 1), ss1 = ss0, ss2 = ss0;
      for (int y = 0; y < ymax; ++y) {
        const uint8_t* p = in.pixel(xx, y + ymin);
        ss0 += int64_t(p[0]) * k[y];
        ss1 += int64_t(p[1]) * k[y];
        ss2 += int64_t(p[2]) * k[y];
      }
      line_out[size_t(xx) * 3 + 0] = clip8(ss0);
      line_out[size_t(xx) * 3 + 1] = clip8(ss1);
      line_out[size_t(xx) * 3 + 2] = clip8(ss2);
    }
  }
  return out;
}

}  // namespace

Image resize(const Image& image, int out_w, int out_h, Filter filter, PassOrder order) {
  if (image.width <= 0 || image.height <= 0 || image.rgb.size() != size_t(image.width) * size_t(image.height) * 3)
    throw ImageError("resize: invalid input image " + std::to_string(image.width) + "x" +
                     std::to_string(image.height) + " with " + std::to_string(image.rgb.size()) + " bytes");
  if (out_w <= 0 || out_h <= 0)
    throw ImageError("resize: output size must be positive, got " + std::to_string(out_w) + "x" +
                     std::to_string(out_h));
  if (out_w == image.width && out_h == image.height) return image;  // Pillow: self.copy()

  const bool need_horizontal = out_w != image.width;
  const bool need_vertical = out_h != image.height;
  // Pass order, as Pillow >= 13 chooses it (for speed, but it changes the rounding of the intermediate
  // image): vertical first when the height shrinks by more than twice as many pixels as the width does;
  // otherwise horizontal first. Pillow <= 12 always went horizontal first (order == PassOrder::Pillow12).
  const int dy = image.height - out_h, dx = image.width - out_w;
  const bool horizontal_first = order == PassOrder::Pillow12 || !(dy > 0 && dy > dx * 2);

  Coefficients vert = precompute(image.height, out_h, filter);
  Coefficients horiz = precompute(image.width, out_w, filter);
  if (horizontal_first) {
    Image temp;
    const Image* src = &image;
    if (need_horizontal) {
      // Only the source rows the vertical pass reads; its row indices shift by ybox_first.
      const int ybox_first = vert.first[0];
      const int ybox_last = vert.first[size_t(out_h - 1)] + vert.count[size_t(out_h - 1)];
      for (int& f : vert.first) f -= ybox_first;
      temp = horizontal_pass(image, ybox_first, ybox_last - ybox_first, horiz);
      src = &temp;
    }
    return need_vertical ? vertical_pass(*src, out_h, vert) : temp;
  }
  // Vertical first (need_vertical is true here: dy > 0): the vertical pass reads all columns, then the
  // horizontal pass reads every row of the intermediate.
  Image temp = vertical_pass(image, out_h, vert);
  return need_horizontal ? horizontal_pass(temp, 0, out_h, horiz) : temp;
}

Image crop(const Image& image, int left, int top, int w, int h) {
  if (w <= 0 || h <= 0 || left < 0 || top < 0 || int64_t(left) + w > image.width ||
      int64_t(top) + h > image.height)
    throw ImageError("crop: box (left " + std::to_string(left) + ", top " + std::to_string(top) + ", " +
                     std::to_string(w) + "x" + std::to_string(h) + ") is not inside the " +
                     std::to_string(image.width) + "x" + std::to_string(image.height) + " image");
  Image out(w, h);
  for (int y = 0; y < h; ++y)
    std::memcpy(out.pixel(0, y), image.pixel(left, top + y), size_t(w) * 3);
  return out;
}

}  // namespace tessera
