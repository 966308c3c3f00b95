// Reading and writing the safetensors format (https://huggingface.co/docs/safetensors):
//   8 bytes little-endian header length N | N bytes of JSON header | data section.
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
// the data section) and may hold "__metadata__" (string -> string).
//
// Reading memory-maps the file and validates everything before any tensor is handed out; every failure
// throws SafetensorsError whose message starts with the file name and says what is wrong.
#pragma once
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace tessera {

struct SafetensorsError : std::runtime_error { using std::runtime_error::runtime_error; };

struct TensorInfo {
  std::string name;
  DType dtype;
  std::string dtype_tag;  // as in the file: "F32", "BF16", ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data section
};

class SafetensorsFile {
 public:
  // Opens and validates `path` (memory-mapped, read-only).
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return infos_; }  // in file order (by data offset)
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming the file and the tensor
  // A CPU tensor viewing the mapped bytes (no copy); it keeps the mapping alive. The mapping is private
  // copy-on-write: writing into the tensor is allowed and never changes the file. When the tensor's bytes
  // are not aligned to its element size in the file, an owning aligned copy is returned instead. BOOL data
  // holding a byte other than 0 or 1 throws (such a C++ bool would be undefined behaviour).
  Tensor get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<Storage> mapping_;  // the whole file
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> infos_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device, dtype, strides; saved contiguous in their own dtype) atomically: into
// PATH.tmp-<pid>-<random> in the same folder, fsync, then rename over PATH and fsync the folder, so a reader
// never sees a partial file. The bytes are deterministic: tensors in name order, the header padded with
// spaces to a multiple of 8 bytes. Failures throw SafetensorsError naming PATH and leave no temp file.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Loads every tensor as an owning CPU copy.
std::map<std::string, Tensor> load_safetensors(const std::string& path);

// The format's dtype tags: F64 F32 F16 BF16 I64 I32 U8 BOOL map to tessera dtypes; other tags the format
// defines (I8, I16, U16, U32, U64, F8_E4M3, F8_E5M2) are recognised and reported as unsupported.
const char* safetensors_dtype_tag(DType dt);

}  // namespace tessera
