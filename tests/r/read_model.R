#!/usr/bin/env Rscript
# Read an anndata-rnn model file (plain HDF5, written with h5py) from R with rhdf5.
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
has_json <- requireNamespace("jsonlite", quietly = TRUE)

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

# ---- root attributes -----------------------------------------------------------------
attrs <- suppressWarnings(h5readAttributes(file, "/"))
for (a in c("format", "format_version", "config"))
    if (is.null(attrs[[a]])) die("root attribute", sQuote(a), "is missing")
fmt <- as.character(attrs$format)
if (fmt != "anndata-rnn-model") die("format attribute is", sQuote(fmt), "not 'anndata-rnn-model'")
version <- attrs$format_version
if (!is.numeric(version) || length(version) != 1 || version != round(version))
    die("format_version is not an integer:", format(version))
version <- as.integer(version)
config_text <- as.character(attrs$config)
if (!startsWith(trimws(config_text), "{")) die("config attribute is not a JSON object")

if (has_json) {
    config <- tryCatch(jsonlite::fromJSON(config_text, simplifyVector = TRUE),
                       error = function(e) die("config is not valid JSON:", conditionMessage(e)))
    if (!is.null(config$format) && config$format != fmt) die("config$format differs from the attribute")
    if (!is.null(config$format_version) && config$format_version != version)
        die("config$format_version differs from the attribute")
    cat(sprintf("config: %d top-level keys: %s\n", length(config), paste(names(config), collapse = ", ")))
} else {
    if (!grepl("\"format\"", config_text, fixed = TRUE)) die("config JSON has no \"format\" key")
    config <- list()
    cat("config: jsonlite not available; checked that it is a JSON object naming 'format'\n")
}

# ---- features ----------------------------------------------------------------------------
if (!("/features/names" %in% ls$path)) die("dataset /features/names is missing")
features <- as.character(h5read(file, "/features/names"))
if (anyNA(features)) die("feature names contain NA")
n_features <- length(features)
cat(sprintf("features: %d (%s%s)\n", n_features, paste(head(features, 5), collapse = ", "),
            if (n_features > 5) ", ..." else ""))
for (p in c("/preprocessing/mean", "/preprocessing/std")) if (p %in% ls$path) {
    v <- as.numeric(h5read(file, p))
    if (length(v) != n_features) die(p, "has", length(v), "values for", n_features, "features")
    if (!all(is.finite(v))) die(p, "has non-finite values")
}

# ---- weights -----------------------------------------------------------------------------
wrows <- ls[ls$group == "/weights" & ls$otype == "H5I_DATASET", ]
if (nrow(wrows) == 0) die("no datasets under /weights")
shapes <- list(); n_params <- 0
for (k in seq_len(nrow(wrows))) {
    w <- h5read(file, wrows$path[k], bit64conversion = "double")
    if (!is.numeric(w) && !is.integer(w)) die(wrows$path[k], "is not numeric (", class(w)[1], ")")
    if (!all(is.finite(as.numeric(w)))) die(wrows$path[k], "has non-finite values")
    d <- if (is.null(dim(w))) length(w) else rev(dim(w))   # numpy orientation
    if (wrows$dim[k] == "( 0 )") d <- integer(0)
    shapes[[wrows$name[k]]] <- I(as.integer(d))
    n_params <- n_params + length(w)
}
cat(sprintf("weights: %d tensors, %d values\n", length(shapes), as.integer(n_params)))

arrays <- list()
for (p in ls$path[ls$group == "/arrays" & ls$otype == "H5I_DATASET"]) {
    v <- h5read(file, p)
    arrays[[basename(p)]] <- if (is.factor(v)) as.character(v) else as.vector(v)
    cat(sprintf("arrays/%s: %s [%d]\n", basename(p), class(arrays[[basename(p)]])[1], length(v)))
}

task <- if (!is.null(config$task)) as.character(config$task) else NA
layout <- if (!is.null(config$layout)) as.character(config$layout) else NA
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
                    classes = I(if (!is.null(config$classes)) as.character(config$classes) else character(0)),
                    config_keys = I(names(config)), arrays = I(names(arrays)))
    if (has_json) {
        writeLines(jsonlite::toJSON(summary, auto_unbox = TRUE, digits = NA), summary_out, useBytes = TRUE)
    } else {
        die("--summary-out needs jsonlite")
    }
}
cat("OK\n")
