// safetensors reading and writing: round trips, one case per validation rule (each builds a bad file by
// hand and checks the message names the file and the problem), and a deterministic mutation test.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <typeinfo>
#include <vector>

#include "engine/safetensors.h"
#include "tests/temp_dir.h"

using namespace tessera;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using tessera::testing::TempDir;
std::string tmp(const std::string& name) {
  static TempDir dir;
  return (dir.path / name).string();
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(v >> (8 * i)));
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A file whose header is `header` verbatim, followed by `data`; `header_len` overrides the length field.
std::string make_file(const std::string& name, const std::string& header, const std::string& data,
                      std::optional<uint64_t> header_len = std::nullopt) {
  std::string path = tmp(name);
  write_bytes(path, le64(header_len.value_or(header.size())) + header + data);
  return path;
}

// Opening `path` must throw SafetensorsError naming the file and containing `reason`.
void check_rejected(const std::string& path, const std::string& reason) {
  CAPTURE(path);
  CAPTURE(reason);
  try {
    SafetensorsFile f(path);
    FAIL("the file was accepted");
  } catch (const SafetensorsError& e) {
    std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.rfind(path + ": ", 0) == 0);  // starts with the file name
    CHECK(msg.find(reason) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);  // one line
  }
}

// A contiguous tensor filled with random bytes (all bit patterns: NaN payloads, subnormals, ...); bool
// elements are 0 or 1.
Tensor random_tensor(const Shape& shape, DType dt, std::mt19937& rng) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = dt == DType::boolean ? uint8_t(rng() & 1) : uint8_t(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

bool no_temp_files_left() {
  for (const auto& e : fs::directory_iterator(fs::path(tmp("x")).parent_path()))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return false;
  return true;
}

// A valid entry's JSON text.
std::string entry(const std::string& dtype, const std::string& shape, uint64_t b, uint64_t e) {
  return "{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(b) + "," +
         std::to_string(e) + "]}";
}

}  // namespace

// ---------------------------------------------------------------- round trips
TEST_CASE("every dtype survives a save/load round trip bit-exactly") {
  std::mt19937 rng(1);
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                       DType::i64, DType::i32, DType::u8,   DType::boolean};
  std::map<std::string, Tensor> tensors;
  for (DType dt : all) tensors[dtype_name(dt)] = random_tensor({3, 5}, dt, rng);
  std::string path = tmp("dtypes.safetensors");
  save_safetensors(path, tensors);
  auto loaded = load_safetensors(path);
  REQUIRE(loaded.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(loaded.count(name));
    CHECK(same_bytes(loaded.at(name), t));
  }
  SafetensorsFile f(path);
  CHECK(f.info("bf16").dtype_tag == "BF16");
  CHECK(f.info("bool").dtype_tag == "BOOL");
  CHECK(f.info("i64").dtype_tag == "I64");
  // The zero-copy view agrees with the owning copy.
  for (const auto& [name, t] : tensors) CHECK(same_bytes(f.get(name), t));
}

TEST_CASE("the writer's layout: sorted names, space padding to 8 bytes, deterministic bytes") {
  std::mt19937 rng(2);
  std::map<std::string, Tensor> tensors = {{"zeta", random_tensor({3}, DType::u8, rng)},
                                           {"alpha", random_tensor({2}, DType::f32, rng)}};
  std::string p1 = tmp("layout1.safetensors"), p2 = tmp("layout2.safetensors");
  save_safetensors(p1, tensors, {{"k", "v"}});
  save_safetensors(p2, tensors, {{"k", "v"}});
  std::string bytes = read_bytes(p1);
  CHECK(bytes == read_bytes(p2));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  CHECK(n % 8 == 0);  // data section starts 8-byte aligned
  json header = json::parse(bytes.substr(8, n));
  CHECK(header["alpha"]["data_offsets"] == json::array({0, 8}));  // names in sorted order
  CHECK(header["zeta"]["data_offsets"] == json::array({8, 11}));
  CHECK(bytes.size() == 8 + n + 11);
  SafetensorsFile f(p1);
  REQUIRE(f.tensors().size() == 2);
  CHECK(f.tensors()[0].name == "alpha");
}

TEST_CASE("metadata round trip") {
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "line one\nline \"two\" \xc3\xa9"},
                                             {"", ""}};
  std::string path = tmp("meta.safetensors");
  save_safetensors(path, {{"x", Tensor::empty({2}, DType::f32)}}, meta);
  CHECK(SafetensorsFile(path).metadata() == meta);
  save_safetensors(path, {{"x", Tensor::empty({2}, DType::f32)}});  // no metadata: no __metadata__ key
  CHECK(SafetensorsFile(path).metadata().empty());
  CHECK(read_bytes(path).find("__metadata__") == std::string::npos);
}

TEST_CASE("saving views, zero-element tensors and 0-d scalars") {
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) + 0.5f;
  Tensor base = Tensor::from(v, {3, 4});
  Tensor transposed = base.transpose(0, 1);              // [4, 3], strides (1, 4)
  Tensor stepped = base.slice(1, 0, 4, 2);                // [3, 2], every other column
  Tensor offset_view = base.select(0, 2);                 // contiguous, non-zero offset
  std::string path = tmp("views.safetensors");
  save_safetensors(path, {{"t", transposed},
                          {"s", stepped},
                          {"o", offset_view},
                          {"empty0", Tensor::empty({0, 3}, DType::bf16)},
                          {"empty1", Tensor::empty({2, 0}, DType::i64)},
                          {"scalar", Tensor::scalar(3.25, DType::f64)}});
  auto m = load_safetensors(path);
  CHECK(m.at("t").shape() == Shape{4, 3});
  CHECK(m.at("t").to_vector<float>() == std::vector<float>{0.5f, 4.5f, 8.5f, 1.5f, 5.5f, 9.5f, 2.5f, 6.5f,
                                                           10.5f, 3.5f, 7.5f, 11.5f});
  CHECK(m.at("s").to_vector<float>() == std::vector<float>{0.5f, 2.5f, 4.5f, 6.5f, 8.5f, 10.5f});
  CHECK(m.at("o").to_vector<float>() == std::vector<float>{8.5f, 9.5f, 10.5f, 11.5f});
  CHECK(m.at("empty0").shape() == Shape{0, 3});
  CHECK(m.at("empty0").dtype() == DType::bf16);
  CHECK(m.at("empty1").shape() == Shape{2, 0});
  CHECK(m.at("scalar").shape() == Shape{});
  CHECK(m.at("scalar").dtype() == DType::f64);
  CHECK(m.at("scalar").item() == 3.25);
}

TEST_CASE("the write is atomic: an existing file is replaced whole and no temp file is left") {
  std::mt19937 rng(3);
  std::string path = tmp("atomic.safetensors");
  Tensor big = random_tensor({1000}, DType::f64, rng), small = random_tensor({2}, DType::i32, rng);
  save_safetensors(path, {{"big", big}});
  save_safetensors(path, {{"small", small}});  // shorter file over a longer one: nothing of the old left
  auto m = load_safetensors(path);
  CHECK(m.size() == 1);
  CHECK(same_bytes(m.at("small"), small));
  CHECK(fs::file_size(path) % 8 == 0);
  CHECK(fs::file_size(path) < 100);
  CHECK(no_temp_files_left());

  // Failures name the path and leave no temp file: a folder that does not exist, and a target that is a
  // folder (the temp file is written, then the rename fails and the temp file must be removed).
  std::string missing = tmp("no-such-folder") + "/x.safetensors";
  CHECK_THROWS_WITH_AS(save_safetensors(missing, {{"small", small}}),
                       doctest::Contains(missing.c_str()), SafetensorsError);
  std::string folder = tmp("a-folder");
  fs::create_directories(folder);
  CHECK_THROWS_WITH_AS(save_safetensors(folder, {{"small", small}}), doctest::Contains("cannot rename"),
                       SafetensorsError);
  CHECK(no_temp_files_left());
}

TEST_CASE("save refuses what the format cannot hold") {
  CHECK_THROWS_WITH_AS(save_safetensors(tmp("bad.safetensors"), {{"__metadata__", Tensor::empty({1})}}),
                       doctest::Contains("__metadata__"), SafetensorsError);
  CHECK_THROWS_WITH_AS(save_safetensors(tmp("bad.safetensors"), {{"x", Tensor()}}),
                       doctest::Contains("undefined"), SafetensorsError);
  CHECK_THROWS_WITH_AS(save_safetensors(tmp("bad.safetensors"), {{"bad\xff", Tensor::empty({1})}}),
                       doctest::Contains("bad.safetensors"), SafetensorsError);
  CHECK_FALSE(fs::exists(tmp("bad.safetensors")));
  CHECK(no_temp_files_left());
}

TEST_CASE("reading: zero-copy views of the mapping, copies when misaligned") {
  // An F32 at data offset 0 and an F64 at data offset 4. The header is padded so the data section starts at
  // a file offset = 4 (mod 8): both are then aligned for their type and get() returns views of the mapping.
  std::string header = "{\"a\":" + entry("F32", "[1]", 0, 4) + ",\"b\":" + entry("F64", "[1]", 4, 12) + "}";
  double d = 2.5;
  float f = -1.5f;
  std::string data(reinterpret_cast<const char*>(&f), 4);
  data += std::string(reinterpret_cast<const char*>(&d), 8);
  while ((8 + header.size()) % 8 != 4) header += ' ';
  std::string path = make_file("aligned.safetensors", header, data);
  SafetensorsFile file(path);
  Tensor a = file.get("a"), b = file.get("b");
  CHECK(a.storage()->nbytes == fs::file_size(path));  // a view of the whole mapping
  CHECK(a.item() == -1.5);
  CHECK(b.item() == 2.5);
  CHECK(reinterpret_cast<uintptr_t>(b.raw_data()) % 8 == 0);

  header += ' ';  // now nothing is aligned: both must be copied, with the right values
  path = make_file("misaligned.safetensors", header, data);
  SafetensorsFile mis(path);
  Tensor a2 = mis.get("a"), b2 = mis.get("b");
  CHECK(a2.storage()->nbytes != fs::file_size(path));
  CHECK(a2.item() == -1.5);
  CHECK(b2.item() == 2.5);
  CHECK(reinterpret_cast<uintptr_t>(b2.raw_data()) % 8 == 0);

  // A view keeps the mapping alive after the file object is gone.
  Tensor survivor;
  { survivor = SafetensorsFile(make_file("alive.safetensors", header.substr(0, header.size() - 1), data)).get("b"); }
  CHECK(survivor.item() == 2.5);
  // Writing through a view is copy-on-write: allowed, and the file is unchanged.
  survivor.data<double>()[0] = 7.0;
  CHECK(SafetensorsFile(tmp("alive.safetensors")).get("b").item() == 2.5);

  CHECK(file.contains("a"));
  CHECK_FALSE(file.contains("zz"));
  CHECK_THROWS_WITH_AS(file.info("zz"), doctest::Contains("no tensor named \"zz\""), SafetensorsError);
}

TEST_CASE("reading accepts an empty header object and trailing spaces") {
  SafetensorsFile empty(make_file("empty.safetensors", "{}", ""));
  CHECK(empty.tensors().empty());
  SafetensorsFile padded(make_file("padded.safetensors", "{\"a\":" + entry("U8", "[2]", 0, 2) + "}     ", "xy"));
  CHECK(padded.get("a").to_vector<int>() == std::vector<int>{'x', 'y'});
}

TEST_CASE("a header of 300,000 tensors reads in linear time") {
  // Regression: the duplicate-key check ran inside nlohmann's callback parser, which rescans the enclosing
  // object at the end of each inner one; 300,000 entries took minutes (past CTest's 600 s limit), and take
  // about a second now. The last entry, and the tiling of every byte, are still checked.
  const int64_t n = 300'000;
  std::string header = "{", data(size_t(n), 'z');
  for (int64_t i = 0; i < n; ++i)
    header += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":" + entry("U8", "[1]", uint64_t(i), uint64_t(i + 1));
  header += "}";
  SafetensorsFile file(make_file("many.safetensors", header, data));
  CHECK(file.tensors().size() == size_t(n));
  CHECK(file.get("t299999").to_vector<int>() == std::vector<int>{'z'});
}

// ---------------------------------------------------------------- one case per validation rule
TEST_CASE("reject: missing file, a folder") {
  check_rejected(tmp("does-not-exist.safetensors"), "cannot open");
  fs::create_directories(tmp("dir.safetensors"));
  check_rejected(tmp("dir.safetensors"), "not a regular file");
}

TEST_CASE("reject: file too short for the 8-byte header length") {
  write_bytes(tmp("short0.safetensors"), "");
  check_rejected(tmp("short0.safetensors"), "too short");
  write_bytes(tmp("short7.safetensors"), std::string(7, '\0'));
  check_rejected(tmp("short7.safetensors"), "too short");
}

TEST_CASE("reject: header length larger than the file, or absurd") {
  check_rejected(make_file("hlen.safetensors", "{}", "", 3), "larger than");
  check_rejected(make_file("hlen-absurd.safetensors", "{}", "", 100'000'001), "absurd");
  check_rejected(make_file("hlen-huge.safetensors", "{}", "", uint64_t(1) << 63), "absurd");
}

TEST_CASE("reject: header not UTF-8, not JSON, not an object") {
  check_rejected(make_file("utf8.safetensors", "{\"a\xff\":1}", ""), "not valid UTF-8");
  check_rejected(make_file("utf8-overlong.safetensors", "{\"\xc0\xaf\":1}", ""), "not valid UTF-8");
  check_rejected(make_file("utf8-surrogate.safetensors", "{\"\xed\xa0\x80\":1}", ""), "not valid UTF-8");
  check_rejected(make_file("json.safetensors", "{\"a\":", ""), "not valid JSON");
  check_rejected(make_file("json-empty.safetensors", "", ""), "not valid JSON");
  check_rejected(make_file("json-trailing.safetensors", "{} x", ""), "not valid JSON");
  check_rejected(make_file("json-deep.safetensors", std::string(5000, '[') + std::string(5000, ']'), ""),
                 "nested");
  check_rejected(make_file("array.safetensors", "[1,2]", ""), "not a JSON object");
}

TEST_CASE("reject: duplicate tensor names (and duplicate fields)") {
  check_rejected(make_file("dup.safetensors",
                           "{\"a\":" + entry("U8", "[1]", 0, 1) + ",\"a\":" + entry("U8", "[1]", 1, 2) + "}", "xy"),
                 "\"a\" more than once");
  check_rejected(make_file("dup-field.safetensors",
                           "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                 "\"dtype\" more than once");
}

TEST_CASE("reject: an entry that is not an object, or lacks or adds fields") {
  check_rejected(make_file("entry.safetensors", "{\"a\":[1]}", ""), "tensor \"a\": entry is not an object");
  check_rejected(make_file("entry-missing.safetensors", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", "x"),
                 "missing field \"shape\"");
  check_rejected(
      make_file("entry-extra.safetensors",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"align\":8}}", "x"),
      "unexpected field \"align\"");
}

TEST_CASE("reject: unknown and unsupported dtypes") {
  check_rejected(make_file("dtype.safetensors", "{\"a\":" + entry("F33", "[1]", 0, 4) + "}", "abcd"),
                 "unknown dtype \"F33\"");
  check_rejected(make_file("dtype-case.safetensors", "{\"a\":" + entry("f32", "[1]", 0, 4) + "}", "abcd"),
                 "unknown dtype");
  for (const char* tag : {"I8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2"})
    check_rejected(make_file("dtype-unsupported.safetensors", "{\"a\":" + entry(tag, "[0]", 0, 0) + "}", ""),
                   std::string("unsupported dtype ") + tag);
  check_rejected(make_file("dtype-type.safetensors",
                           "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                 "dtype is not a string");
}

TEST_CASE("reject: bad shapes and element-count overflow") {
  check_rejected(make_file("shape.safetensors", "{\"a\":" + entry("U8", "5", 0, 5) + "}", "abcde"),
                 "shape is not an array");
  for (const char* s : {"[-1]", "[1.5]", "[2.0]", "[\"2\"]", "[null]", "[[1]]", "[18446744073709551615]"})
    check_rejected(make_file("shape-dims.safetensors", "{\"a\":" + entry("U8", s, 0, 2) + "}", "ab"),
                   "not a list of non-negative integers");
  check_rejected(make_file("shape-overflow.safetensors",
                           "{\"a\":" + entry("U8", "[4294967296,4294967296,4]", 0, 0) + "}", ""),
                 "overflow");
  check_rejected(make_file("shape-bytes-overflow.safetensors",
                           "{\"a\":" + entry("F64", "[4611686018427387904]", 0, 0) + "}", ""),
                 "overflow");
}

TEST_CASE("reject: bad data_offsets") {
  for (const char* off : {"[0]", "[0,1,2]", "[]", "[-1,1]", "[0,1.0]", "\"0,1\"", "[0,null]"})
    check_rejected(make_file("offsets.safetensors",
                             std::string("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":") + off + "}}",
                             "x"),
                   "not two non-negative integers");
  check_rejected(make_file("offsets-order.safetensors", "{\"a\":" + entry("U8", "[0]", 1, 0) + "}", "x"),
                 "begin > end");
}

TEST_CASE("reject: byte range that does not match the shape") {
  check_rejected(make_file("size.safetensors", "{\"a\":" + entry("F32", "[2]", 0, 4) + "}", "abcd"),
                 "span 4 bytes but F32 [2] needs 8");
}

TEST_CASE("reject: byte range past the end of the data section") {
  check_rejected(make_file("past.safetensors", "{\"a\":" + entry("U8", "[4]", 2, 6) + "}", "abcd"),
                 "past the end of the data section");
}

TEST_CASE("reject: overlapping byte ranges") {
  check_rejected(make_file("overlap.safetensors",
                           "{\"a\":" + entry("U8", "[3]", 0, 3) + ",\"b\":" + entry("U8", "[3]", 1, 4) + "}", "abcd"),
                 "\"a\" and \"b\" overlap");
  // An empty tensor placed inside another's bytes is refused too (the reference implementation's rule).
  check_rejected(make_file("overlap-empty.safetensors",
                           "{\"a\":" + entry("U8", "[4]", 0, 4) + ",\"b\":" + entry("U8", "[0]", 2, 2) + "}", "abcd"),
                 "overlap");
}

TEST_CASE("reject: holes and trailing bytes in the data section") {
  check_rejected(make_file("hole.safetensors",
                           "{\"a\":" + entry("U8", "[1]", 0, 1) + ",\"b\":" + entry("U8", "[2]", 2, 4) + "}", "abcd"),
                 "hole: bytes 1..2");
  check_rejected(make_file("hole-start.safetensors", "{\"a\":" + entry("U8", "[2]", 2, 4) + "}", "abcd"),
                 "hole: bytes 0..2");
  check_rejected(make_file("trailing.safetensors", "{\"a\":" + entry("U8", "[2]", 0, 2) + "}", "abcd"),
                 "2 trailing bytes");
  check_rejected(make_file("no-tensors.safetensors", "{}", "abcd"), "4 trailing bytes");
}

TEST_CASE("reject: __metadata__ that is not an object of strings") {
  check_rejected(make_file("meta.safetensors", "{\"__metadata__\":[\"a\"]}", ""), "__metadata__ is not an object");
  check_rejected(make_file("meta-value.safetensors", "{\"__metadata__\":{\"epoch\":3}}", ""),
                 "value of \"epoch\" is not a string");
}

TEST_CASE("reject: BOOL data other than 0 and 1 when read") {
  std::string path = make_file("bool.safetensors", "{\"a\":" + entry("BOOL", "[3]", 0, 3) + "}", std::string("\1\0\2", 3));
  SafetensorsFile f(path);  // the header is fine
  CHECK_THROWS_WITH_AS(f.get("a"), doctest::Contains("BOOL element 2 is 2"), SafetensorsError);
  CHECK_THROWS_AS(load_safetensors(path), SafetensorsError);
}

TEST_CASE("names with control characters are quoted on one line in messages") {
  check_rejected(make_file("ctl.safetensors", "{\"a\\nb\":[1]}", ""), "tensor \"a\\nb\"");
}

// ---------------------------------------------------------------- mutation test
namespace {

struct Outcome {
  int loaded = 0, rejected = 0, other = 0;
  std::string first_other;
};

// Feeds `bytes` to the reader: it must load (and then every tensor's bytes lie inside its storage and can be
// read) or throw SafetensorsError. Returns true when the file loaded.
bool feed(const std::string& bytes, Outcome& out, const std::string& what) {
  static const std::string path = tmp("mutant.safetensors");
  // Removing first, not truncating: ext4 flushes a truncated-and-rewritten file to disk on close
  // (auto_da_alloc), which made thousands of mutants slow.
  fs::remove(path);
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    uint64_t checksum = 0;
    for (const TensorInfo& ti : f.tensors()) {
      Tensor t = f.get(ti.name);
      const auto* lo = static_cast<const uint8_t*>(t.storage()->data);
      const auto* p = static_cast<const uint8_t*>(t.raw_data());
      if (t.nbytes() != ti.end - ti.begin || p < lo || p + t.nbytes() > lo + t.storage()->nbytes)
        throw std::logic_error("tensor " + ti.name + " lies outside its storage");
      for (size_t i = 0; i < t.nbytes(); ++i) checksum += p[i];
    }
    (void)checksum;
    load_safetensors(path);
    ++out.loaded;
    return true;
  } catch (const SafetensorsError&) {
    ++out.rejected;
  } catch (const std::exception& e) {
    if (out.other++ == 0) out.first_other = what + ": " + typeid(e).name() + ": " + e.what();
  }
  return false;
}

json random_number(std::mt19937& rng) {
  switch (rng() % 8) {
    case 0: return -int64_t(rng() % 100) - 1;
    case 1: return uint64_t(-1);
    case 2: return uint64_t(1) << 63;
    case 3: return uint64_t(1) << 32;
    case 4: return 1.5;
    case 5: return 2.0;
    case 6: return rng() % 64;
    default: return 0;
  }
}

json random_value(std::mt19937& rng) {
  switch (rng() % 6) {
    case 0: return random_number(rng);
    case 1: return "F32";
    case 2: return nullptr;
    case 3: return json::array();
    case 4: return json::object();
    default: return true;
  }
}

// One structural change to a parsed header.
void mutate(json& h, std::mt19937& rng) {
  std::vector<std::string> names;
  for (auto it = h.begin(); it != h.end(); ++it) names.push_back(it.key());
  if (names.empty()) { h["x"] = random_value(rng); return; }
  const std::string name = names[rng() % names.size()];
  json& e = h[name];
  if (name == "__metadata__" || !e.is_object()) {
    switch (rng() % 3) {
      case 0: e = random_value(rng); break;
      case 1: h.erase(name); break;
      default: if (e.is_object()) e["k"] = random_value(rng); else e = json::object(); break;
    }
    return;
  }
  static const char* fields[] = {"dtype", "shape", "data_offsets"};
  const char* field = fields[rng() % 3];
  json& f = e[field];
  switch (rng() % 10) {
    case 0: e.erase(field); break;                                          // field removed
    case 1: e["extra"] = random_value(rng); break;                          // field added
    case 2: f = random_value(rng); break;                                   // wrong type
    case 3: h.erase(name); break;                                           // tensor removed
    case 4: if (f.is_array() && !f.empty()) f.erase(f.size() - 1); break;   // array shortened
    case 5: if (f.is_array()) f.push_back(rng() % 4); break;                // array extended
    case 6: if (f.is_array() && !f.empty()) f[rng() % f.size()] = random_number(rng); break;
    case 7: if (field == std::string("data_offsets") && f.is_array() && f.size() == 2) std::swap(f[0], f[1]); break;
    case 8: {  // offsets shifted
      if (f.is_array() && f.size() == 2 && f[0].is_number_unsigned() && f[1].is_number_unsigned()) {
        uint64_t d = rng() % 9;
        f[0] = f[0].get<uint64_t>() + d;
        f[1] = f[1].get<uint64_t>() + d;
      }
      break;
    }
    default: {
      static const char* tags[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "I8", "U64", "F8_E4M3", "", "f32"};
      e["dtype"] = tags[rng() % 13];
      break;
    }
  }
}

}  // namespace

TEST_CASE("mutation test: every mutant either loads safely or throws SafetensorsError") {
  std::mt19937 rng(20240531);  // fixed seed: the same mutants on every run
  std::map<std::string, Tensor> tensors = {
      {"a.f32", random_tensor({3, 5}, DType::f32, rng)},   {"b.bf16", random_tensor({7}, DType::bf16, rng)},
      {"c.i64", random_tensor({2, 2}, DType::i64, rng)},   {"d.bool", random_tensor({5}, DType::boolean, rng)},
      {"e.u8", random_tensor({3}, DType::u8, rng)},        {"f.f16", random_tensor({2, 3}, DType::f16, rng)},
      {"g.f64", random_tensor({2}, DType::f64, rng)},      {"h.i32", random_tensor({0, 4}, DType::i32, rng)},
      {"s", random_tensor({}, DType::f32, rng)},
  };
  const std::string base_path = tmp("base.safetensors");
  save_safetensors(base_path, tensors, {{"format", "pt"}, {"note", "mutation base"}});
  const std::string base = read_bytes(base_path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(base[size_t(i)]);
  const std::string header = base.substr(8, n), data = base.substr(8 + n);
  const json parsed = json::parse(header);
  Outcome out;
  int total = 0;
  REQUIRE(feed(base, out, "the unmutated file"));

  // 1. Random byte changes in the header (and now and then in the data: BOOL bytes matter).
  for (int i = 0; i < 1200; ++i, ++total) {
    std::string m = base;
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t pos = (i % 10 == 9) ? 8 + n + rng() % data.size() : 8 + rng() % n;
      m[pos] = (rng() & 1) ? char(rng()) : char(m[pos] ^ char(1u << (rng() % 8)));
    }
    feed(m, out, "byte flip " + std::to_string(i));
  }

  // 2. Truncation at every length, and extension: all must be refused (the data section must be tiled).
  Outcome cut;
  for (size_t len = 0; len < base.size(); ++len, ++total) feed(base.substr(0, len), cut, "truncated");
  for (int extra = 1; extra <= 16; ++extra, ++total) feed(base + std::string(size_t(extra), '\0'), cut, "extended");
  CHECK(cut.loaded == 0);
  CHECK_MESSAGE(cut.other == 0, cut.first_other);

  // 3. The header-length field: only the true value loads.
  std::vector<uint64_t> lens = {0, 1, n - 1, n + 1, n + 8, base.size() - 8, base.size() - 7, 100'000'000,
                                100'000'001, uint64_t(1) << 63, uint64_t(-1), uint64_t(1) << 32};
  for (int i = 0; i < 300; ++i) lens.push_back(i % 2 ? rng() % (base.size() + 16) : (uint64_t(rng()) << 32 | rng()));
  Outcome len_out;
  for (uint64_t l : lens) {
    ++total;
    if (l == n) continue;
    feed(le64(l) + base.substr(8), len_out, "header length " + std::to_string(l));
  }
  CHECK(len_out.loaded == 0);
  CHECK_MESSAGE(len_out.other == 0, len_out.first_other);

  // 4. The header replaced by garbage: random bytes, and random JSON-ish text.
  const std::string alphabet = "{}[]\":,0123456789-.eE+ truefalsnul\\u\t\nF32BOdtypeshapedata_offsets";
  for (int i = 0; i < 600; ++i, ++total) {
    std::string g(rng() % (2 * n + 1), ' ');
    for (char& c : g) c = (i % 2) ? char(rng()) : alphabet[rng() % alphabet.size()];
    feed(le64(g.size()) + g + data, out, "garbage " + std::to_string(i));
  }

  // 5. Structurally mutated JSON: 1-3 mutations, re-serialised with a correct length; sometimes a name
  //    duplicated in the text (which a JSON object cannot express) or padding spaces added.
  int structural_loaded = 0;
  for (int i = 0; i < 1500; ++i, ++total) {
    json h = parsed;
    int k = 1 + int(rng() % 3);
    for (int j = 0; j < k; ++j) mutate(h, rng);
    std::string text = h.dump();
    if (i % 7 == 0 && h.is_object() && !h.empty()) {  // duplicate the first key
      auto it = h.begin();
      text.insert(1, json(it.key()).dump() + ":" + it.value().dump() + ",");
    }
    if (i % 3 == 0) text.append(rng() % 9, ' ');
    structural_loaded += feed(le64(text.size()) + text + data, out, "structural " + std::to_string(i) + ": " + text);
  }

  CHECK(total >= 3000);
  CHECK_MESSAGE(out.other == 0, out.first_other);
  // The mutants exercise both outcomes: some survive (metadata removed, harmless edits), most are refused.
  CHECK(structural_loaded > 0);
  CHECK(out.rejected > 2000);
  MESSAGE("mutants: " << total << ", loaded " << out.loaded + cut.loaded + len_out.loaded << ", rejected "
                      << out.rejected + cut.rejected + len_out.rejected);
}
