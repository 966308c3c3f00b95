#include "engine/core/fileio.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

namespace tessera {

namespace {

// Writes all of `n` bytes, retrying short writes and EINTR (in pieces of at most 1 GiB: Linux caps one
// write() a little under 2 GiB).
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::random_device rd;
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".tmp-%ld-%08x", long(::getpid()), unsigned(rd()));
  const std::string tmp = path + suffix;

  auto errno_text = [] { return std::string(std::strerror(errno)); };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw FileError(path + ": cannot create " + tmp + ": " + errno_text());
  auto fail_with = [&](const std::string& what) {
    std::string msg = path + ": " + what + ": " + errno_text();
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw FileError(msg);
  };
  for (std::string_view piece : pieces)
    if (!write_all(fd, piece.data(), piece.size())) fail_with("cannot write " + tmp);
  if (::fsync(fd) != 0) fail_with("cannot fsync " + tmp);
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) fail_with("cannot close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_with("cannot rename " + tmp + " to " + path);
  // Make the rename itself durable. The data is already safe; a folder that cannot be opened or synced
  // (some file systems refuse) is reported, since the caller asked for a durable write.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw FileError(path + ": cannot open folder " + dir.string() + ": " + errno_text());
  rc = ::fsync(dfd);
  int err = errno;
  ::close(dfd);
  if (rc != 0 && err != EINVAL)  // EINVAL: the file system does not support syncing folders
    throw FileError(path + ": cannot fsync folder " + dir.string() + ": " + std::strerror(err));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw FileError(path + ": cannot read");
  return s.str();
}

namespace {

// One SHA-256 computation; `feed` hands it the bytes piece by piece through the callback it is given.
template <class Feed>
std::string sha256_of(Feed&& feed) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("sha256: cannot start");
  feed([&](const void* p, size_t n) {
    if (EVP_DigestUpdate(ctx.get(), p, n) != 1) throw std::runtime_error("sha256: cannot update");
  });
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &len) != 1) throw std::runtime_error("sha256: cannot finish");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
  return out;
}

}  // namespace

std::string sha256_hex(std::string_view bytes) {
  return sha256_of([&](auto&& update) { update(bytes.data(), bytes.size()); });
}

std::string sha256_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw FileError(path + ": cannot open: " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::vector<char> buffer(size_t(1) << 20);
  return sha256_of([&](auto&& update) {
    for (;;) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw FileError(path + ": cannot read: " + std::strerror(errno));
      if (n == 0) return;
      update(buffer.data(), size_t(n));
    }
  });
}

std::string dump_json(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  size_t p = s.find("] ");
  return s.rfind("[json.exception.", 0) == 0 && p != std::string::npos ? s.substr(p + 2) : s;
}

int64_t json_integer(const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
  bool ok = false;
  int64_t out = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    ok = hi >= 0 && u <= uint64_t(hi);
    out = ok ? int64_t(u) : 0;
  } else if (v.is_number_integer()) {
    out = v.get<int64_t>();
    ok = true;
  }
  if (!ok || out < lo || out > hi)
    throw std::runtime_error(what + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                             "], got " + v.dump());
  return out;
}

uint64_t json_unsigned(const nlohmann::json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  throw std::runtime_error(what + ": expected an unsigned integer, got " + v.dump());
}

nlohmann::json read_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(path + ": not valid JSON: " + json_error_text(e));
  }
}

}  // namespace tessera
