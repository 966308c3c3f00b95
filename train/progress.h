// The per-epoch progress bar: images/s, running loss, lr, the epoch's and the run's ETA.
//
// On a terminal it redraws one line in place (at most 10 times a second); otherwise (a log file, CI) it
// prints a plain line at each quarter of the epoch, so logs stay readable.
#pragma once
#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace tessera::train {

class ProgressBar {
 public:
  ProgressBar(std::ostream& log, int64_t epoch, int64_t epochs, int64_t steps, bool enabled);
  // Whether update() would draw after `step`: on a terminal at most every 100 ms (and at the last step),
  // otherwise at each quarter of the epoch. Lets the caller fetch the numbers from the GPU only then.
  bool due(int64_t step) const;
  // After `step` of `steps` (1-based) with `images` seen this epoch; draws when due().
  void update(int64_t step, int64_t images, double mean_loss, double lr);
  void finish();  // ends the line on a terminal
  double images_per_second() const;

 private:
  using Clock = std::chrono::steady_clock;
  std::string line(int64_t step, double mean_loss, double lr) const;
  std::ostream& log_;
  int64_t epoch_, epochs_, steps_;
  bool enabled_, tty_;
  Clock::time_point start_, last_draw_;
  int64_t images_ = 0, step_ = 0, next_quarter_ = 1;
  bool drawn_ = false;
};

// "1:02:03" or "4:05".
std::string format_duration(double seconds);

}  // namespace tessera::train
