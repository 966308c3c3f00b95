// Files that are never seen half-written: checkpoints, configs, reports and run logs.
#pragma once
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>

namespace tessera {

struct FileError : std::runtime_error { using std::runtime_error::runtime_error; };

// Writes the pieces, in order, to PATH.tmp-<pid>-<random> in PATH's folder, fsyncs it, renames it over PATH
// and fsyncs the folder: a reader (or a run killed at any instant) sees the old file or the new one, never
// a mix. Throws FileError naming PATH and the failing step; the temporary file is removed on failure.
void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces);
inline void write_file_atomic(const std::string& path, std::string_view text) {
  write_file_atomic(path, std::vector<std::string_view>{text});
}

// The whole file; throws FileError naming PATH when it cannot be read.
std::string read_file(const std::string& path);
// The file parsed as JSON; throws FileError "PATH: not valid JSON: <why>" (or naming PATH when it cannot
// be read).
nlohmann::json read_json(const std::string& path);
// SHA-256 (OpenSSL's libcrypto) as 64 lowercase hex digits, the form sha256sum prints, so a user can check
// a checkpoint's SHA256SUMS with `sha256sum -c` too.
std::string sha256_hex(std::string_view bytes);
// Of a file's bytes, read in 1 MiB pieces (memory stays flat for a file of any size); throws FileError
// naming PATH when it cannot be opened or read.
std::string sha256_file(const std::string& path);

// JSON text that any string survives: bytes that are not UTF-8 (a Linux file name may be any bytes) are
// written as U+FFFD instead of failing the whole write. For files that name images (run.json, metrics,
// evaluations, predictions); trainer_state.json stays strict (it names no file).
std::string dump_json(const nlohmann::json& j, int indent = -1);

// A JSON library error without its "[json.exception.parse_error.101] " prefix: the part a reader needs.
std::string json_error_text(const std::exception& e);

// An integer read from untrusted JSON, within [lo, hi]; anything else (a fraction, 1e30, a string, a value
// out of range) throws std::runtime_error "<what>: expected an integer in [lo, hi], got <value>". The JSON
// library's get<int64_t>() converts a float unchecked, which past the integer's range is undefined.
int64_t json_integer(const nlohmann::json& v, const std::string& what, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX);
// The same for the full unsigned 64-bit range (seeds, counters).
uint64_t json_unsigned(const nlohmann::json& v, const std::string& what);

}  // namespace tessera
