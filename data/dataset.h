// Image-folder data sets: scanning, a seeded stratified train/validation split, and decoding that skips
// unreadable files instead of stopping a training run.
//
// Layouts (detect_layout tells which):
//   Flat:  ROOT/<class>/<image>                      — one split.
//   Split: ROOT/Training/<class>/<image> and ROOT/Testing/<class>/<image>  — the brain-tumor MRI layout.
// Classes are the sorted folder names (byte order) unless a list is given; the label of a sample is the
// index of its class in `classes`. Images are recognised by extension (jpg, jpeg, png, bmp, any case) and
// sorted by path within each class, so a scan is the same on every machine and file system.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/image.h"

namespace tessera {

// Thrown for a data set that cannot be used as asked; the message names the folder and the problem.
struct DatasetError : std::runtime_error { using std::runtime_error::runtime_error; };

struct Sample {
  std::string path;
  int64_t label = 0;
};

struct DatasetSplit {
  std::vector<std::string> classes;
  std::vector<Sample> samples;  // grouped by class in class order, sorted by path within a class
  std::vector<std::string> missing;  // scan_by_name: the classes with no folder here

  size_t size() const { return samples.size(); }
  std::vector<int64_t> class_counts() const;  // [classes.size()]: samples per label
};

// True for a file name ending in .jpg/.jpeg/.png/.bmp (case-insensitive).
bool is_image_file(const std::string& path);

// A data set folder's identity: the SHA-256 of one line per image file of `split`, sorted —
// "<path relative to root>\t<bytes>\t<SHA-256 of the bytes>", or "<path>\tunreadable" for a file that
// cannot be read. Adding, removing, renaming or changing any image changes it; moving or copying the folder
// does not. Reads every file once, on the thread pool.
std::string fingerprint(const DatasetSplit& split, const std::string& root);

// Scans ROOT/<class>/*. With `classes` empty: every non-hidden folder under root is a class, sorted.
// With `classes` given: exactly those, in that order (other folders are ignored); each must exist.
// Errors: root missing or not a folder, a given class missing or listed twice, a class folder without
// images, fewer than 2 classes.
DatasetSplit scan_folder(const std::string& root, const std::vector<std::string>& classes = {});

// ROOT/<class>/* labelled by name against a fixed class list (a model's id2label, Training's classes): a
// folder's label is the index of its name in `classes`, never its position on disk. Every folder must be one
// of the classes (else one error naming each one that is not, and `owner`, whose classes they are); a class
// without a folder is allowed and listed in `missing`, since an evaluation split need not hold every class.
// Other errors: those of scan_folder, except that one class folder is enough.
DatasetSplit scan_by_name(const std::string& root, const std::vector<std::string>& classes, const std::string& owner);

enum class Layout { Flat, Split };
// Split when ROOT/Training and ROOT/Testing are both folders; Flat when neither is. Only one of them
// present is an error (naming the missing one), as is a missing root.
Layout detect_layout(const std::string& root);

struct SplitLayout {
  DatasetSplit train, test;
};
// ROOT/Training and ROOT/Testing. The classes come from Training (or `classes`); Testing is read by name
// against them (scan_by_name) so labels agree: a class folder in Testing that Training lacks is an error, a
// Training class without a Testing folder is listed in test.missing.
SplitLayout load_split_layout(const std::string& root, const std::vector<std::string>& classes = {});

struct TrainVal {
  DatasetSplit train, val;
};
// Stratified train/validation split, deterministic for (data, val_fraction, seed); disjoint and covering.
// Scheme (sklearn's train_test_split(stratify=..., test_size=f, random_state=seed) in spirit, not its
// exact draws):
//   1. n_val = round(f · N) in total (round half to even on the exact product, like Python's round).
//   2. Per class the ideal share is f · n_c; every class gets floor(f · n_c), and the n_val − Σ floor
//      leftover places go to the classes with the largest fractional parts (ties: lower class index) —
//      the largest-remainder method, so each class gets floor or ceil of its share and the total is exact.
//   3. Each class's samples are shuffled (Fisher-Yates, uniforms from Philox keyed by `seed`, one counter
//      sequence through the classes in order) and the first v_c go to validation.
// Both outputs keep the input order (class, then path); shuffling for batches is the loader's job.
// Errors: f outside (0, 1), or a split that would leave train or validation empty.
TrainVal stratified_split(const DatasetSplit& data, double val_fraction, uint64_t seed);

// The same split with whole groups: samples sharing a group id (e.g. the data audit's near-duplicate
// groups: re-encoded or resized copies of one picture) land on the same side, so validation holds no copy
// of a training image. Groups are ordered by their first sample and stratified by its class; each class's
// groups are shuffled as in step 3 and taken whole, in that order, while they fit the class's v_c places
// (a group that would overshoot is passed over). With every sample its own group this is stratified_split,
// draw for draw. A group whose members carry different labels counts toward its first member's class.
// Errors: those of stratified_split, a group list of the wrong length, or no split in whole groups.
TrainVal grouped_split(const DatasetSplit& data, const std::vector<int64_t>& group, double val_fraction,
                       uint64_t seed);

// Decodes a sample's image. An unreadable, corrupt or refused (over `limits`) file gives nullopt and sets
// `warning` to a one-line message naming the file (decode_image's message), so the caller can skip it,
// count it and go on.
std::optional<Image> try_decode(const Sample& sample, std::string& warning, const ImageLimits& limits = {});

}  // namespace tessera
