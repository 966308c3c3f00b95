// The safetensors reader and writer. Validation follows the reference Rust implementation
// (huggingface/safetensors): the header must be UTF-8 JSON, every entry exactly {dtype, shape, data_offsets},
// and the tensors' byte ranges, sorted by begin, must tile the data section exactly (no overlaps, no holes).
#include "engine/safetensors.h"

#include "engine/core/fileio.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <nlohmann/json.hpp>

namespace tessera {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeader = 100'000'000;  // the reference implementation's limit (100 MB)
constexpr int kMaxDepth = 16;                 // a valid header nests 3 deep

struct DTypeTag { const char* tag; bool supported; DType dtype; };
constexpr DTypeTag kTags[] = {
    {"F64", true, DType::f64},  {"F32", true, DType::f32},     {"F16", true, DType::f16},
    {"BF16", true, DType::bf16}, {"I64", true, DType::i64},    {"I32", true, DType::i32},
    {"U8", true, DType::u8},    {"BOOL", true, DType::boolean}, {"I8", false, DType::u8},
    {"I16", false, DType::u8},  {"U16", false, DType::u8},     {"U32", false, DType::u8},
    {"U64", false, DType::u8},  {"F8_E4M3", false, DType::u8}, {"F8_E5M2", false, DType::u8},
};

// A name or value quoted as a JSON string, so control characters and newlines cannot break a message.
std::string json_quoted(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string errno_text() { return std::strerror(errno); }

// Byte offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or npos when all of `s` is valid.
size_t invalid_utf8_at(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) { ++i; continue; }
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return i;
    if (n - i < len) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return std::string::npos;
}

// A JSON value that must be a non-negative integer fitting in int64 (floats like 3.0 are refused, as the
// reference implementation's serde would).
bool as_index(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) out = v.get<uint64_t>();
  else if (v.is_number_integer() && v.get<int64_t>() >= 0) out = uint64_t(v.get<int64_t>());
  else return false;
  return out <= uint64_t(INT64_MAX);
}

// Checks the header's structure without building it: no object repeats a key (nlohmann::json would keep
// the last one silently) and nothing nests absurdly deep. A SAX pass, so it is linear in the header's size:
// nlohmann's callback parser, which could check the same, rescans the enclosing object at the end of every
// inner one (quadratic: a 300,000-tensor header took minutes).
class HeaderChecker : public nlohmann::json_sax<json> {
 public:
  explicit HeaderChecker(const std::string& path) : path_(path) {}
  std::string duplicate;  // the first key seen twice in one object

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    if (!keys_.back().insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    throw SafetensorsError(path_ + ": header is not valid JSON: " + e.what());
  }

 private:
  bool open() {
    if (++depth_ > kMaxDepth)
      throw SafetensorsError(path_ + ": header JSON is nested more than " + std::to_string(kMaxDepth) +
                             " levels deep");
    keys_.emplace_back();  // arrays get an (unused) set too, so close() pops the same way
    return true;
  }
  bool close() {
    --depth_;
    keys_.pop_back();
    return true;
  }
  const std::string& path_;
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // one set per open object or array
};

// Parses the header after HeaderChecker has vouched for its structure.
json parse_header(const std::string& path, const char* text, size_t n) {
  HeaderChecker checker(path);
  json::sax_parse(text, text + n, &checker);
  if (!checker.duplicate.empty())
    throw SafetensorsError(path + ": header has the key " + json_quoted(checker.duplicate) +
                           " more than once (duplicate tensor name or field)");
  try {
    return json::parse(text, text + n);
  } catch (const json::exception& e) {
    throw SafetensorsError(path + ": header is not valid JSON: " + e.what());
  }
}

// Reads one tensor entry of the header; `data_size` is the length of the data section.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& e, uint64_t data_size) {
  const std::string where = path + ": tensor " + json_quoted(name) + ": ";
  if (!e.is_object()) throw SafetensorsError(where + "entry is not an object");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!e.contains(field)) throw SafetensorsError(where + "missing field \"" + field + "\"");
  for (auto it = e.begin(); it != e.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      throw SafetensorsError(where + "unexpected field " + json_quoted(it.key()) +
                             " (allowed: dtype, shape, data_offsets)");
  TensorInfo info;
  info.name = name;

  const json& dt = e["dtype"];
  if (!dt.is_string()) throw SafetensorsError(where + "dtype is not a string");
  info.dtype_tag = dt.get<std::string>();
  const DTypeTag* tag = nullptr;
  for (const auto& t : kTags)
    if (info.dtype_tag == t.tag) tag = &t;
  if (!tag) throw SafetensorsError(where + "unknown dtype " + json_quoted(info.dtype_tag));
  if (!tag->supported)
    throw SafetensorsError(where + "unsupported dtype " + info.dtype_tag +
                           " (tessera reads F64 F32 F16 BF16 I64 I32 U8 BOOL)");
  info.dtype = tag->dtype;

  const json& shape = e["shape"];
  if (!shape.is_array()) throw SafetensorsError(where + "shape is not an array");
  uint64_t numel = 1;
  for (const json& d : shape) {
    uint64_t v;
    if (!as_index(d, v))
      throw SafetensorsError(where + "shape " + shape.dump() + " is not a list of non-negative integers");
    if (__builtin_mul_overflow(numel, v, &numel) || numel > uint64_t(INT64_MAX))
      throw SafetensorsError(where + "shape " + shape.dump() + " has too many elements (overflow)");
    info.shape.push_back(int64_t(v));
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &nbytes))
    throw SafetensorsError(where + "shape " + shape.dump() + " has too many bytes (overflow)");

  const json& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !as_index(off[0], info.begin) || !as_index(off[1], info.end))
    throw SafetensorsError(where + "data_offsets " + off.dump() + " is not two non-negative integers");
  if (info.begin > info.end)
    throw SafetensorsError(where + "data_offsets " + off.dump() + " has begin > end");
  if (info.end - info.begin != nbytes)
    throw SafetensorsError(where + "data_offsets " + off.dump() + " span " + std::to_string(info.end - info.begin) +
                           " bytes but " + info.dtype_tag + " " + shape.dump() + " needs " + std::to_string(nbytes));
  if (info.end > data_size)
    throw SafetensorsError(where + "data_offsets " + off.dump() + " run past the end of the data section (" +
                           std::to_string(data_size) + " bytes)");
  return info;
}

struct FdGuard {
  int fd = -1;
  ~FdGuard() { if (fd >= 0) ::close(fd); }
};

// Makes an owning, 64-byte-aligned CPU copy of `nbytes` bytes.
Tensor copy_bytes(const void* src, const TensorInfo& info) {
  Tensor t = Tensor::empty(info.shape, info.dtype, Device::CPU);
  if (t.nbytes()) std::memcpy(t.raw_data(), src, t.nbytes());
  return t;
}

}  // namespace

const char* safetensors_dtype_tag(DType dt) {
  for (const auto& t : kTags)
    if (t.supported && t.dtype == dt) return t.tag;
  throw SafetensorsError(std::string("safetensors: no tag for dtype ") + dtype_name(dt));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  FdGuard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw SafetensorsError(path + ": cannot open: " + errno_text());
  struct stat st;
  if (::fstat(f.fd, &st) != 0) throw SafetensorsError(path + ": cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) throw SafetensorsError(path + ": not a regular file");
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8)
    throw SafetensorsError(path + ": file too short (" + std::to_string(size) +
                           " bytes) to hold the 8-byte header length");

  // MAP_PRIVATE with write permission: tensors viewing the file may be modified in place (copy-on-write,
  // the file never changes) instead of crashing on a read-only page.
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  if (base == MAP_FAILED) throw SafetensorsError(path + ": cannot mmap: " + errno_text());
  mapping_ = std::make_shared<Storage>();
  mapping_->data = base;
  mapping_->nbytes = size;
  mapping_->device = Device::CPU;
  mapping_->release = [size](void* p) { ::munmap(p, size); };
  const auto* bytes = static_cast<const unsigned char*>(base);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian
  if (n > kMaxHeader)
    throw SafetensorsError(path + ": header length " + std::to_string(n) + " is absurd (more than 100 MB)");
  if (n > size - 8)
    throw SafetensorsError(path + ": header length " + std::to_string(n) + " is larger than the " +
                           std::to_string(size - 8) + " bytes after the length field");
  data_start_ = 8 + n;
  const uint64_t data_size = size - data_start_;

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (size_t bad = invalid_utf8_at(bytes + 8, n); bad != std::string::npos)
    throw SafetensorsError(path + ": header is not valid UTF-8 (bad byte at header offset " + std::to_string(bad) +
                           ")");
  json header = parse_header(path, text, n);  // trailing whitespace (writers' padding) is accepted
  if (!header.is_object()) throw SafetensorsError(path + ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) throw SafetensorsError(path + ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          throw SafetensorsError(path + ": __metadata__ value of " + json_quoted(m.key()) + " is not a string");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    infos_.push_back(parse_entry(path, it.key(), *it, data_size));
  }

  // The ranges, sorted by begin (empty tensors first at a shared offset), must tile [0, data_size).
  std::sort(infos_.begin(), infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : infos_) {
    if (t.begin < cursor)
      throw SafetensorsError(path + ": tensors " + json_quoted(prev->name) + " and " + json_quoted(t.name) +
                             " overlap (bytes " + std::to_string(t.begin) + ".." + std::to_string(cursor) + ")");
    if (t.begin > cursor)
      throw SafetensorsError(path + ": data section has a hole: bytes " + std::to_string(cursor) + ".." +
                             std::to_string(t.begin) + " belong to no tensor");
    cursor = t.end;
    prev = &t;
  }
  if (cursor != data_size)
    throw SafetensorsError(path + ": data section has " + std::to_string(data_size - cursor) +
                           " trailing bytes that belong to no tensor (tensors end at " + std::to_string(cursor) +
                           ", the data section is " + std::to_string(data_size) + " bytes)");
  for (size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw SafetensorsError(path_ + ": no tensor named " + json_quoted(name) + " (the file has " +
                           std::to_string(infos_.size()) + " tensors)");
  return infos_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const uint64_t byte_offset = data_start_ + ti.begin;
  const auto* src = static_cast<const unsigned char*>(mapping_->data) + byte_offset;
  // A C++ bool holding anything but 0 or 1 is undefined behaviour: refuse such data here.
  if (ti.dtype == DType::boolean)
    for (uint64_t i = 0; i < ti.end - ti.begin; ++i)
      if (src[i] > 1)
        throw SafetensorsError(path_ + ": tensor " + json_quoted(name) + ": BOOL element " + std::to_string(i) +
                               " is " + std::to_string(src[i]) + " (must be 0 or 1)");
  const size_t es = dtype_size(ti.dtype);
  // A typed view needs an element-aligned address (the mapping itself is page-aligned); otherwise copy.
  if (byte_offset % es != 0) return copy_bytes(src, ti);
  return Tensor::from_storage(mapping_, ti.shape, ti.dtype, int64_t(byte_offset / es));
}

std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, Tensor> out;
  for (const TensorInfo& ti : file.tensors()) {
    Tensor view = file.get(ti.name);
    out.emplace(ti.name, copy_bytes(view.raw_data(), ti));
  }
  return out;
}

// ---------------------------------------------------------------- writing
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Contiguous CPU copies (or the tensors themselves when already so), in name order.
  std::vector<std::pair<const std::string*, Tensor>> items;
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw SafetensorsError(path + ": \"__metadata__\" cannot name a tensor");
    if (!tensor.defined()) throw SafetensorsError(path + ": tensor " + json_quoted(name) + " is undefined");
    Tensor t = tensor.detach();
    if (t.device() != Device::CPU) t = t.to(Device::CPU);
    t = t.contiguous();
    const uint64_t nb = t.nbytes();
    header[name] = {{"dtype", safetensors_dtype_tag(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", json::array({offset, offset + nb})}};
    offset += nb;
    items.emplace_back(&name, t);
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // a name or value that is not valid UTF-8
    throw SafetensorsError(path + ": cannot write the header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  std::vector<std::string_view> pieces{{reinterpret_cast<const char*>(len), 8}, text};
  for (const auto& [name, t] : items) pieces.emplace_back(static_cast<const char*>(t.raw_data()), t.nbytes());
  try {
    write_file_atomic(path, pieces);
  } catch (const FileError& e) {
    throw SafetensorsError(e.what());
  }
}

}  // namespace tessera
