// A fresh, uniquely named temporary folder for one test, removed with everything in it afterwards.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

namespace tessera::testing {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "test") {
    std::random_device rd;  // pid + random: parallel CTest processes never share a folder
    path = std::filesystem::temp_directory_path() /
           ("tessera-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace tessera::testing
