// `tessera train`: the command line over train/trainer.h. Every option comes from the table in
// train/options.h (flag, help, and whether --resume may change it); options start from --recipe (default,
// study, cpu) and every option given explicitly overrides the recipe's value.
#include <filesystem>
#include <iostream>
#include <memory>
#include <type_traits>

#include "tools/cli.h"
#include "train/trainer.h"

namespace tessera::cli {

namespace {

// One command-line option of the table: what applies it, and whether --resume may change it.
struct Flag {
  CLI::Option* option;
  bool resume_may_change;
  std::function<void(train::TrainOptions&)> apply;
};

struct TrainCli {
  train::TrainOptions values;  // what the options with a value wrote; applied over the recipe only when given
  std::vector<Flag> flags;
};

void run_train(TrainCli& t) {
  train::TrainOptions o = train::recipe_options(t.values.recipe);
  for (const Flag& f : t.flags)
    if (f.option->count() > 0) f.apply(o);
  // A resumed run keeps its own options (they decide the result); only where and how it runs may change.
  for (const Flag& f : t.flags)
    if (!o.resume.empty() && f.option->count() > 0 && !f.resume_may_change)
      throw std::runtime_error("train: --resume continues a run with its own options; " + f.option->get_name() +
                               " cannot be changed (start a new run with --out instead)");
  const bool data_given = !o.data.empty();
  if (o.resume.empty() && !o.synthetic && !std::filesystem::exists(o.data)) {
    std::cerr << "tessera: error: the data set is not at " << o.data << "\n"
              << "  Get the brain-tumour MRI set (Training/ and Testing/ folders of glioma_tumor, meningioma_tumor,\n"
              << "  no_tumor, pituitary_tumor) from https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet\n"
              << "  and pass --data ROOT, or run on a synthetic 4-class set with --synthetic.\n";
    throw std::runtime_error("train: no data at " + (data_given ? o.data : std::string("(none given)")));
  }
  train::train(o, std::cout, command_line());
}

}  // namespace

void add_train(CLI::App& app) {
  auto t = std::make_shared<TrainCli>();
  CLI::App* sub = app.add_subcommand("train", "Train or fine-tune a CvT/ViT classifier on an image-folder data set");
  train::for_each_option([&](const auto& row) {
    if (!*row.flags) return;
    const auto member = row.member;
    std::function<void(train::TrainOptions&)> apply;
    CLI::Option* opt;
    if constexpr (std::is_same_v<std::decay_t<decltype(t->values.*member)>, bool>) {
      const bool sets = row.flags[0] != '!';  // "!--no-progress": the flag sets its member false
      opt = sub->add_flag(row.flags + !sets, row.help);
      apply = [member, sets](train::TrainOptions& o) { o.*member = sets; };
    } else {
      opt = sub->add_option(row.flags, t->values.*member, row.help);
      apply = [values = &t->values, member](train::TrainOptions& o) { o.*member = values->*member; };
    }
    if (row.hidden) opt->group("");
    t->flags.push_back({opt, row.resume_may_change, std::move(apply)});
  });
  sub->callback([t] { run_train(*t); });
}

}  // namespace tessera::cli
