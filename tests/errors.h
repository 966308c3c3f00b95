// What a call throws, as text: for tests that check an error names the file, option or field.
#pragma once
#include <exception>
#include <string>

namespace tessera::testing {

// The message of the exception f throws, or "(no error)".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace tessera::testing
