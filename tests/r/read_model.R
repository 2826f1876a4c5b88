#!/usr/bin/env Rscript
# Read an anndata-rnn model file (plain HDF5, written with h5py) from R with the package
# anndataRnn (r/anndataRnn: readRnnModel(), rhdf5), print it and export a summary.
#
# Usage:
#   Rscript tests/r/read_model.R MODEL.h5 [--features-out FILE] [--summary-out FILE.json]
#
# Layout (see anndata_rnn/model.py):
#   /                  attrs format="anndata-rnn-model", format_version=<int>, config=<JSON>
#   /weights/<name>    one float dataset per tensor of the network's state_dict
#   /features/names    the input features (genes), in the model's order
#   /preprocessing/mean, /preprocessing/std   one value per feature
#   /arrays/<name>     task-specific arrays (e.g. class names)
#
# Prints the file listing and a summary; writes the feature names (one per line,
# UTF-8) and a JSON summary for the Python side to compare.  Exits non-zero with
# an "ERROR:" line when the file does not follow the layout.

suppressPackageStartupMessages(library(rhdf5))
options(width = 160)

args <- commandArgs(trailingOnly = TRUE)
die <- function(...) {
    cat("ERROR:", ..., "\n", file = stderr())
    quit(status = 1)
}
file <- NULL; features_out <- NULL; summary_out <- NULL
i <- 1
while (i <= length(args)) {
    a <- args[[i]]
    if (a == "--features-out") { features_out <- args[[i + 1]]; i <- i + 1 }
    else if (a == "--summary-out") { summary_out <- args[[i + 1]]; i <- i + 1 }
    else if (is.null(file)) file <- a
    else die("unexpected argument", a)
    i <- i + 1
}
if (is.null(file)) die("usage: Rscript read_model.R MODEL.h5 [--features-out FILE] [--summary-out FILE.json]")
if (!file.exists(file)) die("no such file:", file)

ls <- h5ls(file, all = TRUE)
ls$path <- paste(ifelse(ls$group == "/", "", ls$group), ls$name, sep = "/")
cat("== h5ls", basename(file), "==\n")
print(ls[, c("group", "name", "otype", "dclass", "dtype", "dim")], row.names = FALSE)

m <- tryCatch(anndataRnn::readRnnModel(file), error = function(e) die(conditionMessage(e)))
config <- m$config
fmt <- m$format
version <- m$format_version
features <- m$features
n_features <- length(features)
shapes <- lapply(m$shapes, I)
n_params <- m$n_params
arrays <- m$arrays
task <- m$task
layout <- m$layout
cat(sprintf("config: %d top-level keys: %s\n", length(config), paste(names(config), collapse = ", ")))
cat(sprintf("features: %d (%s%s)\n", n_features, paste(head(features, 5), collapse = ", "),
            if (n_features > 5) ", ..." else ""))
cat(sprintf("weights: %d tensors, %d values\n", length(shapes), as.integer(n_params)))
for (a in names(arrays)) cat(sprintf("arrays/%s: %s [%d]\n", a, class(arrays[[a]])[1], length(arrays[[a]])))
cat(sprintf("model: format=%s version=%d task=%s layout=%s features=%d params=%d\n",
            fmt, version, task, layout, n_features, as.integer(n_params)))

if (!is.null(features_out)) {
    con <- file(features_out, open = "w", encoding = "UTF-8")
    writeLines(features, con, useBytes = TRUE)
    close(con)
}
if (!is.null(summary_out)) {
    summary <- list(format = fmt, format_version = version, task = task, layout = layout,
                    n_features = n_features, n_params = n_params, weights = shapes,
                    classes = I(m$classes), config_keys = I(names(config)), arrays = I(names(arrays)))
    writeLines(jsonlite::toJSON(summary, auto_unbox = TRUE, digits = NA), summary_out, useBytes = TRUE)
}
cat("OK\n")
