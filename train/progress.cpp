#include "train/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>

namespace tessera::train {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long long s = std::llround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

ProgressBar::ProgressBar(std::ostream& log, int64_t epoch, int64_t epochs, int64_t steps, bool enabled)
    : log_(log), epoch_(epoch), epochs_(epochs), steps_(std::max<int64_t>(steps, 1)), enabled_(enabled),
      tty_(enabled && ((&log == &std::cerr && ::isatty(2)) || (&log == &std::cout && ::isatty(1)))), start_(Clock::now()), last_draw_(start_) {}

double ProgressBar::images_per_second() const {
  const double s = std::chrono::duration<double>(Clock::now() - start_).count();
  return s > 0 ? double(images_) / s : 0.0;
}

std::string ProgressBar::line(int64_t step, double mean_loss, double lr) const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double per_step = step > 0 ? elapsed / double(step) : 0;
  const double eta_epoch = per_step * double(steps_ - step);
  const double eta_run = eta_epoch + per_step * double(steps_) * double(epochs_ - epoch_);  // evaluation not counted
  constexpr int width = 24;
  const int filled = int(width * step / steps_);
  char buf[256];
  std::snprintf(buf, sizeof buf, "epoch %lld/%lld [%s%s] %lld/%lld  %.1f img/s  loss %.4f  lr %.2e  ETA %s (run %s)",
                static_cast<long long>(epoch_), static_cast<long long>(epochs_), std::string(size_t(filled), '#').c_str(),
                std::string(size_t(width - filled), '.').c_str(), static_cast<long long>(step),
                static_cast<long long>(steps_), images_per_second(), mean_loss, lr, format_duration(eta_epoch).c_str(),
                format_duration(eta_run).c_str());
  return buf;
}

bool ProgressBar::due(int64_t step) const {
  if (!enabled_) return false;
  if (tty_) return !drawn_ || step >= steps_ || Clock::now() - last_draw_ >= std::chrono::milliseconds(100);
  return step * 4 >= next_quarter_ * steps_;
}

void ProgressBar::update(int64_t step, int64_t images, double mean_loss, double lr) {
  const bool draw = due(step);
  step_ = step, images_ = images;
  if (!draw) return;
  if (tty_) {
    last_draw_ = Clock::now();
    log_ << "\r\033[K" << line(step, mean_loss, lr) << std::flush;
    drawn_ = true;
    return;
  }
  while (step * 4 >= next_quarter_ * steps_) ++next_quarter_;
  log_ << line(step, mean_loss, lr) << "\n" << std::flush;
}

void ProgressBar::finish() {
  if (tty_ && drawn_) log_ << "\n" << std::flush;
  drawn_ = false;
}

}  // namespace tessera::train
