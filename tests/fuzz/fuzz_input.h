// What the fuzz targets share: the fuzzer's bytes as a file (the readers under test take paths: safetensors
// is memory-mapped) and as text. Every target treats an exception as the expected answer to bad input; a
// crash, a sanitizer report, a hang (-timeout) or runaway memory (-rss_limit_mb) is a failure.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace tessera::fuzz {

// One file per fuzzing process, rewritten for every input (the folder: $TMPDIR, else /tmp).
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
  static const std::string dir = [] {
    const auto d = std::filesystem::temp_directory_path() / ("tessera-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  const std::string path = dir + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();  // the harness itself is broken: not a finding about tessera
  if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace tessera::fuzz
