// The `tessera` command-line program: main(), --version, and `tessera selfcheck`.
//
// Exit codes: 0 on success (and for --help / --version), 1 for any error, with exactly one line
// `tessera: error: <message>` on stderr.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/core/cuda.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "engine/core/parallel.h"
#include "kernels/devices.h"
#include "tools/cli.h"
#include "train/trainer.h"

namespace tessera::cli {

// Error messages go on one line: newlines inside a message become spaces.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

namespace {

// "CUDA: ..." in one line: whether the backend is built, and the device or why there is none.
std::string cuda_line() {
  if (!cuda::built()) return "CUDA: not built (CPU only)";
  if (cuda::available()) return "CUDA: built, device " + cuda::status();
  return "CUDA: built, no usable GPU (" + cuda::status() + ")";
}

// ---------------------------------------------------------------- selfcheck
// Each check returns a short detail line on success and throws on failure.
struct Check {
  std::string name;
  std::function<std::string()> run;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// C = A·B through the public ops on the CPU, and on the GPU when `gpu`; each result is compared with a
// naive triple loop in double. The tolerance is the standard worst-case bound for a length-K dot product in
// floating point, |err| <= K·u·Σ|a||b| (u = unit roundoff, 2^-24 for fp32); TF32 GEMMs on the GPU first
// round their inputs to 10 mantissa bits, adding 2·2^-11·Σ|a||b|. GPU and CPU then agree within the sum
// of their bounds; the detail line reports their largest difference.
std::string check_matmul(bool gpu) {
  const int64_t M = 37, K = 64, N = 29;  // odd sizes: no tile divides them evenly
  Generator gen(1234);
  Tensor a = gen.normal({M, K}), b = gen.normal({K, N});
  std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>();

  // Checks one result against the naive loop; returns the largest |err| as a fraction of its bound.
  auto verify = [&](const Tensor& c, double rel, const char* where) {
    TS_CHECK(c.shape() == Shape({M, N}), std::string(where) + " matmul returned " + c.str() + ", expected [37, 29]");
    std::vector<float> cv = c.to_vector<float>();
    double worst = 0;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          double p = double(av[size_t(i * K + k)]) * double(bv[size_t(k * N + j)]);
          ref += p;
          mag += std::fabs(p);
        }
        double err = std::fabs(double(cv[size_t(i * N + j)]) - ref), bound = rel * mag + 1e-30;
        if (!(err <= bound))  // also catches NaN
          throw std::runtime_error(std::string(where) + " C[" + std::to_string(i) + "," + std::to_string(j) +
                                   "] = " + fmt("%.9g", cv[size_t(i * N + j)]) + ", naive loop gives " +
                                   fmt("%.9g", ref));
        worst = std::max(worst, err / bound);
      }
    return worst;
  };

  const double cpu_rel = double(K) * std::ldexp(1.0, -24);
  Tensor c_cpu = matmul(a, b);
  double cpu_worst = verify(c_cpu, cpu_rel, "cpu");
  if (!gpu)
    return "[37,64]@[64,29] vs naive loop: within " + fmt("%.0f", cpu_worst * 100) + "% of the fp32 error bound";

  const bool tf32 = matmul_precision() == MatmulPrecision::High;
  const double gpu_rel = cpu_rel + (tf32 ? 2 * std::ldexp(1.0, -11) : 0.0);
  Tensor c_gpu = matmul(a.to(Device::CUDA), b.to(Device::CUDA)).to(Device::CPU);
  double gpu_worst = verify(c_gpu, gpu_rel, "cuda");
  std::vector<float> g = c_gpu.to_vector<float>(), c = c_cpu.to_vector<float>();
  double diff = 0;
  for (size_t i = 0; i < g.size(); ++i) diff = std::max(diff, double(std::fabs(g[i] - c[i])));
  return std::string(tf32 ? "tf32" : "fp32") + ": max |gpu - cpu| " + fmt("%.2g", diff) + ", within " +
         fmt("%.0f", gpu_worst * 100) + "% of the error bound";
}

// d/dx sum(x·x) = 2x. Exact in floating point: the two mul branches each give 1·x and their sum is 2x.
std::string check_autograd() {
  Generator gen(7);
  Tensor x = gen.normal({3, 5});
  x.set_requires_grad(true);
  Tensor y = sum(mul(x, x));
  y.backward();
  TS_CHECK(x.grad().defined(), "x.grad() is undefined after backward");
  TS_CHECK(x.grad().shape() == x.shape(), "x.grad() is " + x.grad().str() + ", x is " + x.str());
  std::vector<float> xv = x.to_vector<float>(), gv = x.grad().to_vector<float>();
  for (size_t i = 0; i < xv.size(); ++i)
    if (gv[i] != 2 * xv[i])
      throw std::runtime_error("grad[" + std::to_string(i) + "] = " + fmt("%.9g", gv[i]) + ", 2x = " +
                               fmt("%.9g", 2 * xv[i]));
  return "d/dx sum(x*x) == 2x exactly (15 elements)";
}

std::string check_safetensors() {
  namespace fs = std::filesystem;
  std::random_device rd;
  fs::path dir = fs::temp_directory_path() /
                 ("tessera-selfcheck-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
  fs::create_directories(dir);
  struct Cleanup { fs::path p; ~Cleanup() { std::error_code ec; fs::remove_all(p, ec); } } cleanup{dir};

  Generator gen(99);
  std::map<std::string, Tensor> saved = {
      {"w.f32", gen.normal({4, 6}).transpose(0, 1)},  // non-contiguous: saved contiguous
      {"w.bf16", gen.normal({8}).to(DType::bf16)},
      {"steps.i64", Tensor::from(std::vector<int64_t>{-3, 0, int64_t(1) << 40}, {3})},
  };
  std::string path = (dir / "check.safetensors").string();
  save_safetensors(path, saved, {{"selfcheck", "yes"}});
  auto loaded = load_safetensors(path);
  TS_CHECK(loaded.size() == saved.size(), "loaded " + std::to_string(loaded.size()) + " tensors, saved 3");
  for (const auto& [name, t] : saved) {
    TS_CHECK(loaded.count(name), "tensor " + name + " is missing after the round trip");
    Tensor want = t.contiguous(), got = loaded.at(name);
    TS_CHECK(got.dtype() == want.dtype() && got.shape() == want.shape(),
             name + ": saved " + want.str() + ", loaded " + got.str());
    TS_CHECK(std::memcmp(got.raw_data(), want.raw_data(), want.nbytes()) == 0, name + ": bytes differ");
  }
  SafetensorsFile f(path);
  TS_CHECK(f.metadata().count("selfcheck"), "metadata lost in the round trip");
  return "f32 (strided) + bf16 + i64 saved and reloaded bit-exactly, metadata kept";
}

int run_selfcheck() {
  const bool color = ::isatty(STDOUT_FILENO);
  const char* green = color ? "\033[32m" : "";
  const char* red = color ? "\033[31m" : "";
  const char* dim = color ? "\033[2m" : "";
  const char* reset = color ? "\033[0m" : "";

  std::cout << "tessera " << TESSERA_VERSION << "\n"
            << "  build:   CUDA backend " << (cuda::built() ? "built in" : "not built") << ", "
            << num_threads() << " CPU threads\n"
            << "  device:  " << (cuda::available() ? cuda::status() : "no GPU (" + cuda::status() + "), CPU only")
            << "\n\n";

  std::vector<Check> checks = {
      {"matmul (cpu)", [] { return check_matmul(false); }},
      {"autograd", check_autograd},
      {"safetensors round trip", check_safetensors},
  };
  if (cuda::available()) checks.push_back({"matmul (cuda vs cpu)", [] { return check_matmul(true); }});

  int failed = 0;
  for (const Check& c : checks) {
    auto t0 = std::chrono::steady_clock::now();
    std::string detail;
    bool ok = true;
    try {
      detail = c.run();
    } catch (const std::exception& e) {
      ok = false;
      detail = one_line(e.what());
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %s%s%s  %-24s %s%7.1f ms%s  %s\n", ok ? green : red, ok ? "PASS" : "FAIL", reset,
                c.name.c_str(), dim, ms, reset, detail.c_str());
    failed += !ok;
  }
  if (!cuda::available()) std::printf("  %sSKIP%s  %-24s (no usable GPU)\n", dim, reset, "matmul (cuda vs cpu)");
  std::printf("\n%s: %d of %zu checks passed\n", failed ? "FAILED" : "OK", int(checks.size()) - failed,
              checks.size());
  std::fflush(stdout);
  return failed ? 1 : 0;
}

}  // namespace

void add_selfcheck(CLI::App& app, int& exit_code) {
  CLI::App* sub = app.add_subcommand(
      "selfcheck", "Print the build and device, then run quick sanity checks (exit 0 only if all pass)");
  sub->callback([&exit_code] { exit_code = run_selfcheck(); });
}

std::string& command_line() {
  static std::string line;
  return line;
}

}  // namespace tessera::cli

int main(int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    tessera::cli::command_line() += (i ? " " : "") + std::string(i ? argv[i] : "tessera");
  CLI::App app{"tessera: a from-scratch deep-learning engine (C++20 / CUDA)", "tessera"};
  app.set_version_flag("--version", [] {
    return std::string("tessera ") + TESSERA_VERSION + "\n" + tessera::cli::cuda_line() + "\nmodels on CUDA: " +
           (tessera::train::kModelsOnCuda ? "yes" : "not yet (" + tessera::train::models_on_cuda_caveat() + ")");
  });
  app.require_subcommand(0, 1);  // none is checked below, so that unknown words get CLI11's own message
  int exit_code = 0;
  tessera::cli::add_inspect(app);
  tessera::cli::add_data(app);
  tessera::cli::add_predict(app);
  tessera::cli::add_attn(app);
  tessera::cli::add_train(app);
  tessera::cli::add_eval(app);
  tessera::cli::add_report(app);
  tessera::cli::add_bench(app);
  tessera::cli::add_selfcheck(app, exit_code);
  try {
    app.parse(argc, argv);  // runs the chosen subcommand's callback
    if (app.get_subcommands().empty())
      throw CLI::RequiredError("no subcommand given; one of train, eval, predict, report, bench, attn, inspect, data, selfcheck");
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "tessera: error: " << tessera::cli::one_line(e.what()) << " (see tessera --help)\n";
    return 1;
  } catch (const tessera::train::TrainInterrupted& e) {  // Ctrl-C or SIGTERM: the shell's 128 + signal
    std::cout.flush();
    std::cerr << "tessera: " << e.what() << "\n";
    return 128 + e.signal;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "tessera: error: " << tessera::cli::one_line(e.what()) << "\n";
    return 1;
  } catch (...) {
    std::cout.flush();
    std::cerr << "tessera: error: unknown exception\n";
    return 1;
  }
  return exit_code;
}
