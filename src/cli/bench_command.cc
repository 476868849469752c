#include "cli/bench_command.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <thread>

#include "bench/ckpt_bench.h"
#include "bench/comm_bench.h"
#include "bench/compress_bench.h"
#include "bench/model_shapes.h"
#include "bench/replay_bench.h"
#include "cli/launch.h"
#include "cli/validators.h"
#include "compress/registry.h"

namespace frugal::cli {
namespace {

struct CommBenchFlags {
  std::string backend = "gloo";
  int workers = 2;
  bench::CommBenchOptions options;
  bool json = false;
  bool check = false;
  int64_t timeout_ms = 120'000;
  bool timeout_given = false;  // set from the parse: --timeout-ms beats FRUGAL_TIMEOUT_MS
  std::string iface;
  bool bind_cores = false;
};

void print_rows(const std::vector<bench::CommBenchRow>& rows, bool json) {
  std::string text = json ? bench::format_json_lines(rows) : bench::format_table(rows);
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

// One rank of the benchmark over `comm`; rank 0 prints.
Status bench_one_rank(Communicator& comm, const CommBenchFlags& flags) {
  FRUGAL_ASSIGN_OR_RETURN(auto rows, bench::run_comm_bench(comm, flags.options));
  if (comm.rank() == 0) print_rows(rows, flags.json);
  return Status::ok();
}

int run_comm_bench_command(const CommBenchFlags& flags, const std::vector<std::string>& argv) {
  if (Status s = bench::validate(flags.options); !s.is_ok()) return report_error(s);
  if (flags.workers < 1) {
    return report_error(invalid_argument("--workers " + std::to_string(flags.workers) +
                                         " is invalid; it must be >= 1"));
  }
  RankJob job;
  job.backend = flags.backend;
  job.workers = flags.workers;
  job.timeout_ms = flags.timeout_ms;
  job.timeout_given = flags.timeout_given;
  job.iface = flags.iface;
  job.bind_cores = flags.bind_cores;
  job.check_consistency = flags.check;
  return run_job_ranks(job, argv, [&](Communicator& comm) { return bench_one_rank(comm, flags); });
}

struct CompressBenchFlags {
  std::vector<std::string> compressors;  // comma-separated spec lists, one per flag
  std::vector<std::string> sizes = {"1e4", "1e5", "1e6", "1e7", "2.5e7"};
  std::vector<std::string> matrices = {"2048x2048"};
  bench::CompressBenchOptions options;
  bool json = false;
  bool list = false;
};

// "2.5e7" -> 25000000: a whole number from 1 to 1e15, in plain or scientific notation.
std::optional<int64_t> parse_count(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value >= 1) || value > 1e15 || value != std::floor(value)) {
    return std::nullopt;
  }
  return static_cast<int64_t>(value);
}

// "2.5e7" -> 25000000; "none" (alone) -> no entries.
Result<std::vector<int64_t>> parse_sizes(const std::vector<std::string>& texts) {
  std::vector<int64_t> sizes;
  for (const std::string& text : texts) {
    if (text == "none") continue;
    const std::optional<int64_t> size = parse_count(text);
    if (!size) {
      return invalid_argument("--sizes: '" + text +
                              "' is not a positive whole number of elements (e.g. 1e6, 25000000)");
    }
    sizes.push_back(*size);
  }
  return sizes;
}

// "2048x2048" -> {2048, 2048}; "none" (alone) -> no entries.
Result<std::vector<Shape>> parse_matrices(const std::vector<std::string>& texts) {
  std::vector<Shape> shapes;
  for (const std::string& text : texts) {
    if (text == "none") continue;
    Shape shape;
    size_t begin = 0;
    while (begin <= text.size()) {
      size_t end = std::min(text.find('x', begin), text.size());
      std::string dim = text.substr(begin, end - begin);
      char* stop = nullptr;
      long long value = std::strtoll(dim.c_str(), &stop, 10);
      if (dim.empty() || *stop != '\0' || value < 1) {
        return invalid_argument("--matrices: '" + text +
                                "' is not a shape like 2048x2048 (positive dimensions)");
      }
      shape.push_back(value);
      begin = end + 1;
    }
    shapes.push_back(shape);
  }
  return shapes;
}

int run_compress_bench_command(CompressBenchFlags flags) {
  if (flags.list) {
    std::string text = "Registered compressors:\n" + describe_compressors() +
                       "Default specs at --density " + format_param(flags.options.density) + ":\n";
    for (const std::string& spec : bench::default_compressor_specs(flags.options.density)) {
      text += "  " + spec + "\n";
    }
    const std::string dir =
        flags.options.shapes_dir.empty() ? bench::default_shapes_dir() : flags.options.shapes_dir;
    text += "Models (in " + dir + "):";
    for (const std::string& model : bench::list_models(flags.options.shapes_dir)) {
      text += " " + model;
    }
    std::fputs((text + "\n").c_str(), stdout);
    return 0;
  }
  for (const std::string& list : flags.compressors) {
    for (std::string& spec : bench::split_spec_list(list)) {
      flags.options.compressors.push_back(std::move(spec));
    }
  }
  auto sizes = parse_sizes(flags.sizes);
  if (!sizes.is_ok()) return report_error(sizes.status());
  flags.options.sizes = sizes.value();
  auto matrices = parse_matrices(flags.matrices);
  if (!matrices.is_ok()) return report_error(matrices.status());
  flags.options.matrices = matrices.value();
  std::erase(flags.options.models, "none");

  bench::CompressBenchRow previous;
  bool first = true;
  bench::CompressBenchSink sink;
  sink.row = [&](const bench::CompressBenchRow& row) {
    std::string text = flags.json ? bench::format_json_line(row)
                                  : bench::format_table_row(row, first ? nullptr : &previous);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    previous = row;
    first = false;
  };
  // Notes go to stderr with --json, so stdout stays one record per line.
  sink.note = [&](const std::string& text) {
    std::fputs(("# " + text + "\n").c_str(), flags.json ? stderr : stdout);
    std::fflush(flags.json ? stderr : stdout);
  };
  Status status = bench::run_compress_bench(flags.options, sink);
  return status.is_ok() ? 0 : report_error(status);
}

void add_compress_bench_command(CLI::App& bench, int& exit_code) {
  auto flags = std::make_shared<CompressBenchFlags>();
  bench::CompressBenchOptions& o = flags->options;
  CLI::App* compress = bench.add_subcommand(
      "compress",
      "Compressor speed per tensor size and model: time, GB/s, vs a memory read and torch::topk");
  compress
      ->add_option("--compressors", flags->compressors,
                   "Compressor specs, comma-separated (default: one per registered compressor "
                   "at --density; see --list)")
      ->type_name("SPEC,...");
  compress
      ->add_option("--sizes", flags->sizes,
                   "Single-tensor sizes in elements; n divisible by 1000 runs as [n/1000, 1000] "
                   "('none' to skip)")
      ->delimiter(',')
      ->capture_default_str();
  compress->add_option("--matrices", flags->matrices, "Extra 2-D tensors, e.g. 2048x2048 ('none')")
      ->delimiter(',')
      ->capture_default_str();
  compress
      ->add_option("--models", o.models,
                   "Model shape lists (bench/shapes/<name>.txt, or a path; 'none' to skip)")
      ->delimiter(',')
      ->capture_default_str();
  compress->add_option("--shapes-dir", o.shapes_dir,
                       "Directory of model shape lists (default: $FRUGAL_SHAPES_DIR, else the "
                       "checkout's bench/shapes)");
  compress
      ->add_option("--density", o.density,
                   "Density of the default specs and of the torch::topk baseline (specs with a "
                   "density parameter use theirs)")
      ->capture_default_str();
  compress->add_option("--repeat", o.repeat, "Timed samples per measurement (median reported)")
      ->check(positive())
      ->capture_default_str();
  compress
      ->add_option("--threads", o.threads,
                   "Threads: the compressors' pool plus the caller, and LibTorch's intra-op "
                   "threads")
      ->check(positive())
      ->capture_default_str();
  compress->add_option("--seed", o.seed, "Seed of the data and the compressors")
      ->capture_default_str();
  compress->add_flag("--json", flags->json, "Print one JSON record per row instead of a table");
  compress->add_flag("--list", flags->list,
                     "List the registered compressors, the default specs and the models");
  compress->callback([flags, &exit_code] { exit_code = run_compress_bench_command(*flags); });
}

struct ReplayBenchFlags {
  std::string backend = "gloo";
  int workers = 4;
  int64_t timeout_ms = 120'000;
  bool timeout_given = false;  // set from the parse: --timeout-ms beats FRUGAL_TIMEOUT_MS
  std::string iface;
  bool bind_cores = false;
  std::vector<std::string> models = {"resnet50"};
  std::string backward_ms = "auto";
  bench::ReplayBenchOptions options;
  std::string json_path;
  std::string markdown_path;
  std::string plot_path;
};

// "auto" -> nullopt (derived from the dense communication time), else milliseconds >= 0.
Result<std::optional<double>> parse_backward_ms(const std::string& text) {
  if (text == "auto") return std::optional<double>();
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value >= 0) || !std::isfinite(value)) {
    return invalid_argument("--backward-ms: '" + text +
                            "' is invalid; it must be 'auto' or milliseconds >= 0");
  }
  return std::optional<double>(value);
}

Status write_text_file(const std::string& path, const std::string& text, const char* flag) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return unavailable(std::string(flag) + ": cannot write '" + path + "'");
  return Status::ok();
}

using PlotFromJson = Status (*)(const std::string& json_path, const std::string& svg_path);

// Writes `json` to json_path and draws plot_path from it, each when given; without --json the
// plot is drawn from a temporary file.
Status write_json_and_plot(const std::string& json, const std::string& json_path,
                           const std::string& plot_path, PlotFromJson plot) {
  if (!json_path.empty()) FRUGAL_RETURN_IF_ERROR(write_text_file(json_path, json, "--json"));
  if (plot_path.empty()) return Status::ok();
  if (!json_path.empty()) return plot(json_path, plot_path);
  char temp[] = "/tmp/frugal-bench-XXXXXX.json";
  const int fd = mkstemps(temp, 5);
  if (fd < 0) return unavailable("--plot: cannot create a temporary JSON file in /tmp");
  close(fd);
  Status status = write_text_file(temp, json, "--plot");
  if (status.is_ok()) status = plot(temp, plot_path);
  std::remove(temp);
  return status;
}

// Rank 0's files: JSON, markdown, and the plot.
Status write_replay_outputs(const ReplayBenchFlags& flags,
                            const std::vector<bench::ReplayResult>& results) {
  if (!flags.markdown_path.empty()) {
    FRUGAL_RETURN_IF_ERROR(
        write_text_file(flags.markdown_path, bench::format_markdown(results), "--markdown"));
  }
  return write_json_and_plot(bench::format_json(results, flags.options), flags.json_path,
                             flags.plot_path, bench::plot_replay);
}

// One rank: every model in turn; rank 0 prints each table as soon as it is measured.
Status replay_one_rank(Communicator& comm, const ReplayBenchFlags& flags,
                       const bench::ReplayBenchOptions& options) {
  std::vector<bench::ReplayResult> results;
  for (const std::string& model : flags.models) {
    bench::ReplayBenchOptions model_options = options;
    model_options.model = model;
    FRUGAL_ASSIGN_OR_RETURN(bench::ReplayResult result,
                            bench::run_replay_bench(comm, model_options));
    if (comm.rank() == 0) {
      std::fputs((bench::format_table(result) + "\n").c_str(), stdout);
      std::fflush(stdout);
    }
    results.push_back(std::move(result));
  }
  return comm.rank() == 0 ? write_replay_outputs(flags, results) : Status::ok();
}

int run_replay_bench_command(const ReplayBenchFlags& flags, const std::vector<std::string>& argv) {
  if (flags.workers < 1) {
    return report_error(invalid_argument("--workers " + std::to_string(flags.workers) +
                                         " is invalid; it must be >= 1"));
  }
  auto backward_ms = parse_backward_ms(flags.backward_ms);
  if (!backward_ms.is_ok()) return report_error(backward_ms.status());
  bench::ReplayBenchOptions options = flags.options;
  options.backward_ms = *backward_ms;
  // Every model is checked before any rank starts, so a typo fails at once and only once.
  for (const std::string& model : flags.models) {
    options.model = model;
    if (Status s = bench::validate(options); !s.is_ok()) return report_error(s);
  }
  RankJob job;
  job.backend = flags.backend;
  job.workers = flags.workers;
  job.timeout_ms = flags.timeout_ms;
  job.timeout_given = flags.timeout_given;
  job.iface = flags.iface;
  job.bind_cores = flags.bind_cores;
  job.check_consistency = false;  // a benchmark: no extra round trip per collective
  return run_job_ranks(job, argv,
                       [&](Communicator& comm) { return replay_one_rank(comm, flags, options); });
}

void add_replay_bench_command(CLI::App& bench, int& exit_code,
                              const std::vector<std::string>& argv) {
  auto flags = std::make_shared<ReplayBenchFlags>();
  bench::ReplayBenchOptions& o = flags->options;
  CLI::App* replay = bench.add_subcommand(
      "replay",
      "Fusion strategies of the engine on a model's real gradient shapes, paced by a backward "
      "time, with no model");
  replay
      ->add_option("--model", flags->models,
                   "Model shape lists, comma-separated: a name in bench/shapes (resnet50, "
                   "bert-base, vgg16) or a path; one table per model")
      ->delimiter(',')
      ->capture_default_str();
  replay->add_option("--shapes-dir", o.shapes_dir,
                     "Directory of model shape lists (default: $FRUGAL_SHAPES_DIR, else the "
                     "checkout's bench/shapes)");
  replay
      ->add_option("--fusion", o.fusions,
                   "Strategies: none, bytes:MB, omgs, safusion, ssfusion (with --compress), or "
                   "dense (no compressor, bytes:25)")
      ->delimiter(',')
      ->capture_default_str();
  replay
      ->add_option("--compress", o.compressor,
                   "Compressor spec of every strategy but dense; a sparse one (topk, dgc, "
                   "gaussiank, redsync) lets the engine count missing tensors")
      ->capture_default_str();
  replay
      ->add_option("--backward-ms", flags->backward_ms,
                   "Backward time per step, or auto: the dense communication time / "
                   "--comm-ratio. Gradients become ready in proportion to their parameters")
      ->capture_default_str();
  replay
      ->add_option("--comm-ratio", o.comm_ratio,
                   "With --backward-ms auto: dense communication time / backward time")
      ->capture_default_str();
  replay->add_option("--steps", o.steps, "Timed steps per strategy (median reported)")
      ->check(positive())
      ->capture_default_str();
  replay
      ->add_option("--warmup", o.warmup,
                   "Untimed steps per strategy first (default: the engine's 2 profile warm-up "
                   "steps + --profile-steps + 2, so that only the final plan is timed)")
      ->check(non_negative());
  replay
      ->add_option("--profile-steps", o.profile_steps,
                   "Steps the cost-model planners (omgs, safusion, ssfusion) profile")
      ->check(positive())
      ->capture_default_str();
  replay->add_option("--seed", o.seed, "Seed of the gradients and the compressors")
      ->capture_default_str();
  replay->add_option("--backend", flags->backend, "Communication backend")
      ->check(CLI::IsMember({"local", "gloo", "mpi"}))
      ->capture_default_str();
  replay
      ->add_option("--workers", flags->workers,
                   "Ranks to start on this host; ignored when started by mpirun or with "
                   "RANK/WORLD_SIZE (e.g. by bench/cluster.sh)")
      ->capture_default_str();
  replay->add_flag("--bind-cores", flags->bind_cores, kBindCoresHelp);
  replay
      ->add_option("--timeout-ms", flags->timeout_ms,
                   "Per-collective timeout; beats FRUGAL_TIMEOUT_MS")
      ->check(positive())
      ->capture_default_str();
  replay->add_option(
      "--iface", flags->iface,
      "Network interface for gloo; beats FRUGAL_SOCKET_IFNAME (default: that variable, "
      "else loopback)");
  replay
      ->add_option("--json", flags->json_path,
                   "Write {run, records}: one record per model and strategy")
      ->type_name("FILE");
  replay->add_option("--markdown", flags->markdown_path, "Write the tables as markdown")
      ->type_name("FILE");
  replay
      ->add_option("--trace", o.trace_prefix,
                   "Write a Chrome trace of every rank per model and strategy to "
                   "PREFIX.<model>.<fusion>.trace.json (warm-up included)")
      ->type_name("PREFIX");
  replay
      ->add_option("--plot", flags->plot_path,
                   "Draw iterations/s per model and strategy into this SVG "
                   "(bench/plot_results.py, python3-matplotlib)")
      ->type_name("FILE");
  replay->callback([flags, replay, &exit_code, argv] {
    flags->timeout_given = replay->count("--timeout-ms") > 0;
    exit_code = run_replay_bench_command(*flags, argv);
  });
}
struct CkptBenchFlags {
  std::string parameters = "1e8";
  std::string steps_between_saves = "auto";
  bench::CkptBenchOptions options;
  std::string json_path;
  std::string plot_path;
};

// "auto" -> nullopt (chosen from the disk baseline), else a whole number of steps.
Result<std::optional<int>> parse_steps_between_saves(const std::string& text) {
  if (text == "auto") return std::optional<int>();
  const std::optional<int64_t> steps = parse_count(text);
  if (!steps || *steps > 10'000) {
    return invalid_argument("--steps-between-saves " + text +
                            " is invalid; it must be 'auto' or from 1 to 10000");
  }
  return std::optional<int>(static_cast<int>(*steps));
}

int run_ckpt_bench_command(const CkptBenchFlags& flags) {
  bench::CkptBenchOptions options = flags.options;
  const std::optional<int64_t> parameters = parse_count(flags.parameters);
  if (!parameters) {
    return report_error(invalid_argument("--parameters " + flags.parameters +
                                         " is invalid; it must be a whole number from 1000 to "
                                         "5e10 (e.g. 1e8)"));
  }
  options.parameters = *parameters;
  auto steps = parse_steps_between_saves(flags.steps_between_saves);
  if (!steps.is_ok()) return report_error(steps.status());
  options.steps_between_saves = *steps;
  if (Status s = bench::validate(options); !s.is_ok()) return report_error(s);
  // Progress on stderr, so stdout is the markdown report alone.
  auto result = bench::run_ckpt_bench(options, [](const std::string& text) {
    std::fputs(("# " + text + "\n").c_str(), stderr);
    std::fflush(stderr);
  });
  if (!result.is_ok()) return report_error(result.status());
  std::fputs(bench::format_markdown(*result).c_str(), stdout);
  std::fflush(stdout);
  Status status = write_json_and_plot(bench::format_json(*result), flags.json_path, flags.plot_path,
                                      bench::plot_ckpt);
  return status.is_ok() ? 0 : report_error(status);
}

void add_ckpt_bench_command(CLI::App& bench, int& exit_code) {
  auto flags = std::make_shared<CkptBenchFlags>();
  bench::CkptBenchOptions& o = flags->options;
  CLI::App* ckpt = bench.add_subcommand(
      "ckpt",
      "Checkpoint cost to training: stall per save (sync vs async, which is frugal train's "
      "default lazy mode), persist vs the disk's write + fsync bandwidth, restore time; the "
      "restored state is checked bit for bit");
  ckpt->add_option("--parameters", flags->parameters,
                   "f32 parameters of the synthetic transformer-like state (e.g. 1e8)")
      ->capture_default_str();
  ckpt->add_option("--moments", o.moments, "Optimizer moments per parameter, 0..2 (Adam: 2)")
      ->capture_default_str();
  ckpt->add_option("--ranks", o.ranks, "Thread-ranks, each with its own copy of the state")
      ->capture_default_str();
  ckpt->add_option("--saves", o.saves, "Saves per mode (sync, async)")->capture_default_str();
  ckpt->add_option("--forward-ms", o.forward_ms, "CPU work per step in the forward window")
      ->capture_default_str();
  ckpt->add_option("--backward-ms", o.backward_ms, "CPU work per step in the backward window")
      ->capture_default_str();
  ckpt->add_option("--steps-between-saves", flags->steps_between_saves,
                   "Steps from one save to the next, or auto: the smallest count >= 2 whose "
                   "work lasts 1.5 x the persist time the disk baseline predicts")
      ->capture_default_str();
  ckpt->add_option("--dir", o.parent_dir,
                   "Where the run's fresh directory (frugal-ckpt-XXXXXX) is made")
      ->capture_default_str();
  ckpt->add_flag("--keep-files", o.keep_files, "Keep the run's directory (checkpoints included)");
  ckpt->add_option("--chunk-bytes", o.chunk_bytes, "Checkpoint chunk size (e.g. 4M), 4K to 1G")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  ckpt->add_option("--json", flags->json_path, "Write {run, modes, disk, restores, targets}")
      ->type_name("FILE");
  ckpt->add_option("--trace", o.trace_prefix,
                   "Write a Chrome trace of every rank per mode to PREFIX.<mode>.trace.json "
                   "(forward, backward, snapshot copies, persists)")
      ->type_name("PREFIX");
  ckpt->add_option("--plot", flags->plot_path,
                   "Draw stall per mode and the throughputs into this SVG "
                   "(bench/plot_results.py, python3-matplotlib)")
      ->type_name("FILE");
  ckpt->callback([flags, &exit_code] { exit_code = run_ckpt_bench_command(*flags); });
}

}  // namespace

void add_bench_commands(CLI::App& app, int& exit_code, const std::vector<std::string>& argv) {
  CLI::App* bench =
      app.add_subcommand("bench",
                         "Benchmarks: comm, compress, replay, ckpt (tables on stdout; "
                         "each one's --help says how it writes JSON)");
  bench->require_subcommand(1);

  auto flags = std::make_shared<CommBenchFlags>();
  CLI::App* comm = bench->add_subcommand(
      "comm", "Collective bandwidth per message size, in the style of nccl-tests");
  comm->add_option("--backend", flags->backend, "Communication backend")
      ->check(CLI::IsMember({"local", "gloo", "mpi"}))
      ->capture_default_str();
  comm->add_option("--workers", flags->workers,
                   "Ranks to start on this host (threads for local, processes for gloo, mpirun "
                   "for mpi); ignored when started by mpirun or with RANK/WORLD_SIZE")
      ->capture_default_str();
  comm->add_option("--ops", flags->options.ops, "Operations to measure")
      ->delimiter(',')
      ->check(CLI::IsMember({"allreduce", "allgather", "allgatherv"}))
      ->capture_default_str();
  comm->add_option("--min-bytes", flags->options.min_bytes, "Smallest message (e.g. 4K, 1M)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--max-bytes", flags->options.max_bytes, "Largest message (e.g. 256M)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--seconds-per-size", flags->options.seconds_per_size,
                   "Approximate time spent timing each size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm->add_flag("--bind-cores", flags->bind_cores, kBindCoresHelp);
  comm->add_option("--timeout-ms", flags->timeout_ms,
                   "Per-operation timeout; beats FRUGAL_TIMEOUT_MS")
      ->check(positive())
      ->capture_default_str();
  comm->add_option(
      "--iface", flags->iface,
      "Network interface for gloo; beats FRUGAL_SOCKET_IFNAME (default: that variable, "
      "else loopback)");
  comm->add_flag("--check", flags->check,
                 "Verify before each collective that all ranks agree (adds a round trip)");
  comm->add_flag("--json", flags->json, "Print one JSON record per row instead of a table");
  comm->callback([flags, comm, &exit_code, argv] {
    flags->timeout_given = comm->count("--timeout-ms") > 0;
    exit_code = run_comm_bench_command(*flags, argv);
  });

  add_compress_bench_command(*bench, exit_code);
  add_replay_bench_command(*bench, exit_code, argv);
  add_ckpt_bench_command(*bench, exit_code);
}

}  // namespace frugal::cli
