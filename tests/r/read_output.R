#!/usr/bin/env Rscript
# Read an .h5ad written by anndata-rnn into a Bioconductor SingleCellExperiment with the
# R package anndataRnn (r/anndataRnn: readH5ad(), rhdf5 + the anndata on-disk spec) and
# check it against values exported by Python.  The reading itself is the package's
# (one R code path); this script adds the check mode for tests/test_r_interop.py.
#
# Usage:
#   Rscript tests/r/read_output.R FILE.h5ad [--key rnn] [--expected DIR]
#                                 [--strict] [--tol 1e-5] [--save-rds OUT.rds]
#                                 [--label NAME] [--then FILE2.h5ad [options]]...
# "--then" starts another job in the same R process (loading
# SingleCellExperiment takes seconds); each job ends with a line
# "== RESULT <label>: OK" or "== RESULT <label>: FAILED (status N)", and the exit
# status is the largest one of all jobs.
#
# Mapping (anndata -> SingleCellExperiment, genes x cells; see ?anndataRnn::readH5ad):
#   X, layers/<k>     -> assays "X", "<k>"   (dense -> matrix, csr/csc -> dgCMatrix)
#   obs               -> colData             (categoricals -> factor, codes -1 -> NA)
#   var               -> rowData
#   varm/<k>          -> rowData(sce)[[k]]   (a matrix column; "varm.<k>" if <k> is
#                                             also a var column)
#   obsm/<k>          -> reducedDims         (cells x k)
#   obsp/<k>, varp/<k>-> colPairs, rowPairs
#   uns               -> metadata(sce)       (groups -> nested lists)
#
# Check mode (--expected DIR): DIR holds CSV files exported by the Python side
# (tests/test_r_interop.py), one per element, named "<slot>__<name>.csv":
#   dims.csv                 columns n_obs,n_vars
#   obs_names.csv, var_names.csv   column "name"
#   obs__<col>.csv, var__<col>.csv columns name,value
#   obsm__<k>.csv, varm__<k>.csv   first column = obs/var names, then the matrix
#   layers__<k>.csv                n_obs x n_vars (first column = obs names)
#   uns__<key>.csv           columns path,index,kind,value: every leaf of
#                            uns/<key> flattened in C order
# Every key-related element R finds (obs/var columns, obsm/varm matrices and
# layers named <key>_*, X_<key> or X_<key>_*: <key>_pred, <key>_conf,
# <key>_cluster, <key>_proba, X_<key>, <key>_forecast, ...) must have an expected
# file and vice versa.  Any mismatch -> "MISMATCH: ..." lines and exit status 1.
#
# Encodings that trip R readers (bool HDF5 enums, uint8 -> raw, nullable-*
# encodings, the null encoding, unsorted CSR/CSC indices, int64) are decoded
# by the package but reported as "INTEROP:" lines naming the element; with --strict those
# found in key-related elements (obs/<key>_*, obsm/X_<key>, uns/<key>/..., ...)
# make the script exit with status 3.

suppressPackageStartupMessages({
    library(anndataRnn)  # attaches SingleCellExperiment (and SummarizedExperiment, S4Vectors)
})
options(width = 160)

# --------------------------------------------------------------------- args --
usage <- function(msg = NULL) {
    if (!is.null(msg)) cat("ERROR:", msg, "\n", file = stderr())
    cat("usage: Rscript read_output.R FILE.h5ad [--key rnn] [--expected DIR]",
        "[--strict] [--tol 1e-5] [--save-rds OUT.rds] [--label NAME] [--then FILE2.h5ad ...]\n",
        file = stderr())
    quit(status = 2)
}

parse_args <- function(argv) {
    opt <- list(file = NULL, key = "rnn", expected = NULL, strict = FALSE,
                tol = 1e-5, save_rds = NULL, label = NULL)
    i <- 1
    while (i <= length(argv)) {
        a <- argv[[i]]
        need <- function() {
            if (i + 1 > length(argv)) usage(paste("missing value for", a))
            argv[[i + 1]]
        }
        if (a == "--key") { opt$key <- need(); i <- i + 1 }
        else if (a == "--expected") { opt$expected <- need(); i <- i + 1 }
        else if (a == "--tol") { opt$tol <- as.numeric(need()); i <- i + 1 }
        else if (a == "--save-rds") { opt$save_rds <- need(); i <- i + 1 }
        else if (a == "--label") { opt$label <- need(); i <- i + 1 }
        else if (a == "--strict") opt$strict <- TRUE
        else if (a %in% c("-h", "--help")) usage()
        else if (startsWith(a, "--")) usage(paste("unknown option", a))
        else if (is.null(opt$file)) opt$file <- a
        else usage(paste("unexpected argument", a))
        i <- i + 1
    }
    if (is.null(opt$file)) usage("no input file")
    if (!file.exists(opt$file)) usage(paste("no such file:", opt$file))
    if (!is.null(opt$expected) && !dir.exists(opt$expected)) usage(paste("no such directory:", opt$expected))
    if (is.null(opt$label)) opt$label <- basename(opt$file)
    opt
}

# Per-job globals, set by run_job(): opt, FILE, KEY, LS, sce, failures

# key-related elements: obs/<key>_*, var/<key>_*, obsm/X_<key>, obsm/<key>_*,
# layers/<key>_*, varm/..., uns/<key>(/...)
key_related <- function(path) {
    k <- gsub("([.|()\\^{}+$*?\\[\\]\\\\])", "\\\\\\1", KEY)
    grepl(paste0("^/?(obs|var|obsm|varm|layers|obsp|varp|uns)/(X_)?", k,
                 "(_[^/]*)?(/|$)"), path)
}

# ------------------------------------------------------------ file listing --
list_h5 <- function(file) {
    ls <- rhdf5::h5ls(file, all = TRUE, recursive = TRUE)
    ls$path <- sub("^/+", "/", paste(ifelse(ls$group == "/", "", ls$group), ls$name, sep = "/"))
    ls
}
exists_h5 <- function(path) path %in% LS$path
children <- function(path) LS$name[LS$group == path]

# ---------------------------------------------------------------- summary --
print_summary <- function() {
cat("== SingleCellExperiment from", basename(FILE), "==\n")
print(sce)
cat("assays:\n")
for (a in assayNames(sce)) cat(sprintf("  %-20s %s %d x %d\n", a, class(assay(sce, a))[1],
                                        nrow(sce), ncol(sce)))
cat("colData:\n")
for (cn in colnames(colData(sce))) {
    v <- colData(sce)[[cn]]
    extra <- if (is.factor(v)) sprintf(" (%d levels%s, %d NA)", nlevels(v),
                                       if (is.ordered(v)) ", ordered" else "", sum(is.na(v))) else ""
    cat(sprintf("  %-20s %s%s\n", cn, class(v)[1], extra))
}
cat("rowData:\n")
for (cn in colnames(rowData(sce))) {
    v <- rowData(sce)[[cn]]
    cat(sprintf("  %-20s %s%s\n", cn, class(v)[1],
                if (!is.null(dim(v))) paste0(" ", paste(dim(v), collapse = " x ")) else ""))
}
cat("reducedDims:\n")
for (r in reducedDimNames(sce)) cat(sprintf("  %-20s %d x %d\n", r, nrow(reducedDim(sce, r)), ncol(reducedDim(sce, r))))
if (!is.null(metadata(sce)[[KEY]])) {
    cat(sprintf("metadata[['%s']]:\n", KEY))
    str(metadata(sce)[[KEY]], max.level = 3, vec.len = 4, give.attr = FALSE)
}
}

print_issues <- function(issues) {
    if (is.null(issues)) return(invisible())
    cat("interop notes (encodings that trip R readers):\n")
    tag <- function(p) paste0(p, ifelse(vapply(p, key_related, logical(1)), " [anndata-rnn output]", ""))
    err <- issues[issues[, "severity"] == "error", , drop = FALSE]
    for (i in seq_len(nrow(err)))
        cat(sprintf("INTEROP: %s: %s\n", tag(err[i, "path"]), err[i, "problem"]))
    notes <- issues[issues[, "severity"] == "note", , drop = FALSE]
    for (pr in unique(notes[, "problem"])) {   # notes grouped by problem
        p <- notes[notes[, "problem"] == pr, "path"]
        cat(sprintf("INTEROP (note): %s: %d element(s): %s\n", pr, length(p),
                    paste(tag(p), collapse = ", ")))
    }
}

# ------------------------------------------------------------- check mode --
fail <- function(...) failures <<- c(failures, paste0(...))

flatten_c <- function(x) {
    # numpy orientation -> C order (row-major) vector
    if (!is.null(dim(x)) && length(dim(x)) > 1) as.vector(aperm(x, rev(seq_along(dim(x))))) else as.vector(x)
}

cmp_values <- function(what, got, exp, tol = opt$tol, labels = NULL) {
    if (length(got) != length(exp)) {
        fail(what, ": length ", length(got), " in R, expected ", length(exp)); return()
    }
    if (is.factor(got) || is.character(got)) {
        g <- as.character(got); e <- as.character(exp)
        e[!is.na(e) & e == ""] <- NA
        bad <- which(!((is.na(g) & is.na(e)) | (!is.na(g) & !is.na(e) & g == e)))
    } else if (is.logical(got)) {
        e <- toupper(as.character(exp)) == "TRUE"
        bad <- which(!((is.na(got) & is.na(e)) | (!is.na(got) & !is.na(e) & got == e)))
    } else {
        g <- as.numeric(got); e <- suppressWarnings(as.numeric(exp))
        ok <- (is.na(g) & is.na(e)) | (is.infinite(g) & is.infinite(e) & sign(g) == sign(e)) |
            (!is.na(g) & !is.na(e) & abs(g - e) <= tol + tol * abs(e))
        ok[is.na(ok)] <- FALSE
        bad <- which(!ok)
    }
    if (length(bad)) {
        i <- bad[1]
        at <- if (is.null(labels)) as.character(i) else labels[i]
        fail(sprintf("%s: %d of %d values differ (first at [%s]: R=%s expected=%s)", what,
                     length(bad), length(got), at, format(got[i], digits = 15), format(exp[i])))
    }
}

read_csv <- function(path) {
    utils::read.csv(path, check.names = FALSE, stringsAsFactors = FALSE,
                    colClasses = "character", na.strings = "")
}

check_names <- function(what, got, exp) {
    if (!identical(as.character(got), as.character(exp))) {
        i <- which(as.character(got) != as.character(exp))[1]
        fail(sprintf("%s: names differ (R has %d, expected %d; first difference at %s: R=%s expected=%s)",
                     what, length(got), length(exp), i, got[i], exp[i]))
    }
}

# the key-related elements R sees in the SCE, as "<slot>__<name>": every
# obs/var column, obsm/varm matrix and layer named <key>_*, X_<key> or X_<key>_*
key_elements <- function() {
    ours <- function(n) n[startsWith(n, paste0(KEY, "_")) | n == paste0("X_", KEY) |
                          startsWith(n, paste0("X_", KEY, "_"))]
    c(if (length(x <- ours(colnames(colData(sce))))) paste0("obs__", x),
      if (length(x <- ours(colnames(var_cols())))) paste0("var__", x),
      if (length(x <- ours(reducedDimNames(sce)))) paste0("obsm__", x),
      if (length(x <- ours(varm_names()))) paste0("varm__", x),
      if (length(x <- ours(assayNames(sce)))) paste0("layers__", x))
}
varm_names <- function() if (exists_h5("/varm")) children("/varm") else character(0)
var_cols <- function() {
    rd <- rowData(sce)
    rd[, setdiff(colnames(rd), c(varm_names(), paste0("varm.", varm_names()))), drop = FALSE]
}

check_vector <- function(slot, name, file) {
    exp <- read_csv(file)
    got <- if (slot == "obs") colData(sce)[[name]] else var_cols()[[name]]
    if (is.null(got)) { fail(slot, "/", name, ": missing in the SingleCellExperiment"); return() }
    names_r <- if (slot == "obs") colnames(sce) else rownames(sce)
    check_names(paste0(slot, "/", name), names_r, exp[[1]])
    cmp_values(paste0(slot, "/", name), got, exp[[2]], labels = names_r)
}

check_matrix <- function(slot, name, file) {
    exp <- read_csv(file)
    if (slot == "obsm") {
        got <- if (name %in% reducedDimNames(sce)) reducedDim(sce, name) else NULL
        names_r <- colnames(sce)
    } else if (slot == "varm") {
        nm <- if (paste0("varm.", name) %in% colnames(rowData(sce))) paste0("varm.", name) else name
        got <- if (name %in% varm_names()) rowData(sce)[[nm]] else NULL
        names_r <- rownames(sce)
    } else {  # layers (or X): assay is genes x cells, expected file is cells x genes
        a <- if (slot == "X") "X" else name
        got <- if (a %in% assayNames(sce)) t(as.matrix(assay(sce, a))) else NULL
        names_r <- colnames(sce)
        if (!is.null(got) && !identical(colnames(exp)[-1], rownames(sce)))
            fail(slot, "/", name, ": gene names in the header differ from rownames(sce)")
    }
    what <- paste0(slot, "/", name)
    if (is.null(got)) { fail(what, ": missing in the SingleCellExperiment"); return() }
    got <- as.matrix(got)
    if (is.null(dim(got))) got <- matrix(got, ncol = 1)
    check_names(what, names_r, exp[[1]])
    em <- as.matrix(exp[, -1, drop = FALSE])
    if (!identical(dim(got), dim(em))) {
        fail(sprintf("%s: shape %s in R, expected %s", what, paste(dim(got), collapse = " x "),
                     paste(dim(em), collapse = " x ")))
        return()
    }
    cols <- colnames(exp)[-1]
    cmp_values(what, as.vector(got), as.vector(em),
               labels = paste0(rep(exp[[1]], times = ncol(em)), ", ", rep(cols, each = nrow(em))))
}

flatten_uns <- function(x, prefix) {
    rows <- list()
    add <- function(path, vals, kind) {
        if (!length(vals)) return()
        rows[[length(rows) + 1]] <<- data.frame(path = path, index = seq_along(vals) - 1L, kind = kind,
                                                value = vals, stringsAsFactors = FALSE)
    }
    walk <- function(v, path) {
        if (is.null(v)) {
            rows[[length(rows) + 1]] <<- data.frame(path = path, index = 0L, kind = "null", value = NA_character_)
        } else if (is(v, "DataFrame") || is.data.frame(v)) {
            for (cn in colnames(v)) walk(v[[cn]], paste0(path, "/", cn))
        } else if (is.list(v)) {
            for (n in names(v)) walk(v[[n]], if (nzchar(path)) paste0(path, "/", n) else n)
        } else if (is.factor(v) || is.character(v)) {
            add(path, as.character(flatten_c(v)), "str")
        } else if (is.logical(v)) {
            add(path, ifelse(flatten_c(v), "TRUE", "FALSE"), "bool")
        } else if (is.numeric(v)) {
            add(path, sprintf("%.17g", as.numeric(flatten_c(v))), "num")
        } else if (is(v, "sparseMatrix")) {
            add(path, sprintf("%.17g", as.numeric(flatten_c(as.matrix(v)))), "num")
        } else {
            rows[[length(rows) + 1]] <<- data.frame(path = path, index = 0L, kind = class(v)[1], value = NA_character_)
        }
    }
    walk(x, prefix)
    if (!length(rows)) return(data.frame(path = character(0), index = integer(0), kind = character(0), value = character(0)))
    do.call(rbind, rows)
}

check_uns <- function(file) {
    exp <- read_csv(file)
    if (is.null(metadata(sce)[[KEY]])) { fail("uns/", KEY, ": missing in metadata(sce)"); return() }
    got <- flatten_uns(metadata(sce)[[KEY]], "")
    ek <- paste(exp$path, exp$index); gk <- paste(got$path, got$index)
    miss <- setdiff(ek, gk); extra <- setdiff(gk, ek)
    if (length(miss)) fail(sprintf("uns/%s: %d leaves missing in R, e.g. %s", KEY, length(miss), miss[1]))
    if (length(extra)) fail(sprintf("uns/%s: %d unexpected leaves in R, e.g. %s", KEY, length(extra), extra[1]))
    m <- match(ek, gk)
    e <- exp[!is.na(m), , drop = FALSE]
    g <- got[m[!is.na(m)], , drop = FALSE]
    blank <- function(v) ifelse(is.na(v), "", v)
    ev <- suppressWarnings(as.numeric(e$value)); gv <- suppressWarnings(as.numeric(g$value))
    num_ok <- (is.na(gv) & is.na(ev)) |
        (!is.na(gv) & !is.na(ev) & (gv == ev | abs(gv - ev) <= opt$tol + opt$tol * abs(ev)))
    num_ok[is.na(num_ok)] <- FALSE
    ok <- ifelse(e$kind != g$kind, FALSE,
          ifelse(e$kind == "num", num_ok,
          ifelse(e$kind == "bool", toupper(blank(g$value)) == toupper(blank(e$value)),
          ifelse(e$kind == "str", blank(g$value) == blank(e$value), TRUE))))
    for (i in head(which(!ok), 20)) {
        p <- sprintf("uns/%s/%s[%s]", KEY, e$path[i], e$index[i])
        if (e$kind[i] != g$kind[i]) fail(sprintf("%s: kind %s in R, expected %s", p, g$kind[i], e$kind[i]))
        else fail(sprintf("%s: R=%s expected=%s", p, g$value[i], e$value[i]))
    }
    if (sum(!ok) > 20) fail(sprintf("uns/%s: %d differences in all", KEY, sum(!ok)))
    cat(sprintf("checked uns/%s: %d leaves\n", KEY, nrow(exp)))
}

run_checks <- function() {
    dir <- opt$expected
    files <- list.files(dir, pattern = "\\.csv$")
    checked <- character(0)
    if ("dims.csv" %in% files) {
        d <- read_csv(file.path(dir, "dims.csv"))
        if (as.integer(d$n_obs) != ncol(sce) || as.integer(d$n_vars) != nrow(sce))
            fail(sprintf("dims: R has %d genes x %d cells, expected n_vars=%s n_obs=%s",
                         nrow(sce), ncol(sce), d$n_vars, d$n_obs))
        checked <- c(checked, "dims")
    }
    if ("obs_names.csv" %in% files) { check_names("obs_names", colnames(sce), read_csv(file.path(dir, "obs_names.csv"))$name); checked <- c(checked, "obs_names") }
    if ("var_names.csv" %in% files) { check_names("var_names", rownames(sce), read_csv(file.path(dir, "var_names.csv"))$name); checked <- c(checked, "var_names") }
    elem_files <- grep("__", files, value = TRUE)
    for (f in elem_files) {
        base <- sub("\\.csv$", "", f)
        slot <- sub("__.*$", "", base); name <- sub("^[^_]+__", "", base)
        path <- file.path(dir, f)
        if (slot %in% c("obs", "var")) check_vector(slot, name, path)
        else if (slot %in% c("obsm", "varm", "layers", "X")) check_matrix(slot, name, path)
        else if (slot == "uns") { if (name != KEY) fail("uns file for key ", name, " but --key is ", KEY) else check_uns(path) }
        else fail("unknown expected file ", f)
        checked <- c(checked, paste0(slot, "/", name))
    }
    # every key-related element present in R must have been exported by Python
    for (el in key_elements()) if (!(paste0(el, ".csv") %in% files))
        fail(sub("__", "/", el), ": present in the file but no expected values were exported")
    cat(sprintf("checked %d elements: %s\n", length(checked), paste(checked, collapse = ", ")))
}

# ------------------------------------------------------------------- jobs --
run_job <- function(o) {
    opt <<- o
    FILE <<- normalizePath(o$file)
    KEY <<- o$key
    failures <<- character(0)
    LS <<- list_h5(FILE)
    built <- tryCatch(anndataRnn:::.read_h5ad(FILE), error = function(e) {
        cat("ERROR: could not build a SingleCellExperiment from", FILE, ":", conditionMessage(e), "\n")
        NULL
    })
    if (is.null(built)) return(2L)
    sce <<- built$sce
    print_summary()
    if (!is.null(o$save_rds)) saveRDS(sce, o$save_rds)
    issues <- if (nrow(built$issues)) as.matrix(built$issues) else NULL
    print_issues(issues)
    if (!is.null(o$expected)) {
        ok <- tryCatch({ run_checks(); TRUE }, error = function(e) {
            fail("check mode crashed: ", conditionMessage(e)); FALSE
        })
    }
    strict_bad <- if (!is.null(issues))
        issues[vapply(issues[, "path"], key_related, logical(1)) & issues[, "severity"] == "error", ,
               drop = FALSE] else NULL
    if (length(failures)) {
        for (f in failures) cat("MISMATCH:", f, "\n")
        cat(sprintf("FAILED: %d mismatch(es) between R and Python\n", length(failures)))
        return(1L)
    }
    if (o$strict && !is.null(strict_bad) && nrow(strict_bad)) {
        for (i in seq_len(nrow(strict_bad)))
            cat(sprintf("STRICT: %s uses an encoding that trips R readers: %s\n",
                        strict_bad[i, "path"], strict_bad[i, "problem"]))
        cat(sprintf("FAILED: %d anndata-rnn output element(s) with R-unfriendly encodings\n",
                    nrow(strict_bad)))
        return(3L)
    }
    0L
}

argv <- commandArgs(trailingOnly = TRUE)
if (!length(argv)) usage("no input file")
groups <- split(argv, cumsum(argv == "--then"))
jobs <- lapply(groups, function(g) parse_args(g[g != "--then"]))
status <- 0L
for (o in jobs) {
    st <- run_job(o)
    cat(sprintf("== RESULT %s: %s\n", o$label, if (st == 0L) "OK" else sprintf("FAILED (status %d)", st)))
    status <- max(status, st)
}
quit(status = status)
