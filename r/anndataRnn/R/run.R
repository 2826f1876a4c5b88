#' The anndata-rnn command line used by the rnn* functions
#'
#' \code{rnnExecutable()} is the command the \code{rnn*} functions run: the option
#' \code{anndataRnn.executable} when set (a character vector: the program and any leading
#' arguments, e.g. \code{c("python3", "-m", "anndata_rnn")}), else the environment
#' variable \code{ANNDATA_RNN_EXECUTABLE} (split at spaces), else \code{anndata-rnn} found
#' on the \code{PATH}. Nothing is ever downloaded: install the Python package
#' (\code{pip install anndata-rnn}) or point the option at an installation.
#' \code{rnnAvailable()} says whether one was found.
#'
#' @return \code{rnnExecutable()}: a character vector, \code{""} when none is found;
#'   \code{rnnAvailable()}: \code{TRUE} or \code{FALSE}.
#' @examples
#' rnnAvailable()
#' rnnExecutable()
#' \dontrun{
#' options(anndataRnn.executable = c("/opt/venv/bin/python", "-m", "anndata_rnn"))
#' }
#' @export
rnnExecutable <- function() {
    exe <- getOption("anndataRnn.executable")
    if (is.null(exe) || !length(exe) || !nzchar(exe[[1]])) {
        env <- Sys.getenv("ANNDATA_RNN_EXECUTABLE", "")
        exe <- if (nzchar(env)) strsplit(trimws(env), "[[:space:]]+")[[1]] else unname(Sys.which("anndata-rnn"))
    }
    as.character(exe)
}

#' @rdname rnnExecutable
#' @export
rnnAvailable <- function() {
    exe <- rnnExecutable()
    nzchar(exe[[1]]) && nzchar(Sys.which(exe[[1]]))
}

# R value -> command line arguments for one option
.cli_value <- function(name, value, option, kind) {
    if (is.null(value)) return(character(0))
    if (kind %in% c("flag", "pair")) {
        if (!is.logical(value) || length(value) != 1 || is.na(value))
            stop(sprintf("'%s' must be TRUE or FALSE", name), call. = FALSE)
        if (value) return(option)
        return(if (kind == "pair") sub("^--", "--no-", option) else character(0))
    }
    if (is.factor(value)) value <- as.character(value)
    if (!is.atomic(value) || !length(value) || anyNA(value))
        stop(sprintf("'%s' must be a vector without NA", name), call. = FALSE)
    if (is.logical(value)) stop(sprintf("'%s' takes a value, not TRUE/FALSE", name), call. = FALSE)
    text <- if (is.numeric(value)) {
        vapply(value, function(v) if (v == round(v) && abs(v) < 1e15) format(v, scientific = FALSE)
                                  else as.character(v), character(1))
    } else {
        as.character(value)
    }
    c(option, paste(text, collapse = ","))
}

.cli_args <- function(command, values) {
    table <- .rnn_options[[command]]
    args <- character(0)
    for (name in names(table$options))
        args <- c(args, .cli_value(name, values[[name]], table$options[[name]], table$kinds[[name]]))
    args
}

# LD_LIBRARY_PATH without the directories R's etc/ldpaths put in front (R's lib, Java, the
# system library directories): a Python built with a shared libpython (pyenv, python.org)
# would otherwise load the system's libpython and lose its own site-packages.
.tool_ld_library_path <- function(value = Sys.getenv("LD_LIBRARY_PATH")) {
    if (!nzchar(value)) return(value)
    parts <- strsplit(value, ":", fixed = TRUE)[[1]]
    r_lib <- normalizePath(R.home("lib"), mustWork = FALSE)
    system_dir <- grepl("^/(usr/)?lib(64)?(/[^/]+-linux-gnu[^/]*)?/?$", parts)
    drop <- !nzchar(parts) | startsWith(parts, R.home()) | startsWith(parts, r_lib) |
        grepl("/jvm/", parts, fixed = TRUE) | system_dir
    paste(parts[!drop], collapse = ":")
}

# Run the command line; an error of the tool becomes an R error with its one-line message.
.run_cli <- function(command, args) {
    exe <- rnnExecutable()
    if (!nzchar(exe[[1]]))
        stop("the anndata-rnn command line was not found on the PATH: install the Python ",
             "package anndata-rnn or set options(anndataRnn.executable = ...)", call. = FALSE)
    out <- tempfile("anndataRnn_stdout")
    err <- tempfile("anndataRnn_stderr")
    on.exit(unlink(c(out, err)))
    old_ld <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
    if (!is.na(old_ld)) {
        Sys.setenv(LD_LIBRARY_PATH = .tool_ld_library_path(old_ld))
        on.exit(Sys.setenv(LD_LIBRARY_PATH = old_ld), add = TRUE)
    }
    status <- suppressWarnings(system2(exe[[1]], shQuote(c(exe[-1], command, args)),
                                       stdout = out, stderr = err))
    stdout <- if (file.exists(out)) readLines(out, warn = FALSE, encoding = "UTF-8") else character(0)
    stderr <- if (file.exists(err)) readLines(err, warn = FALSE, encoding = "UTF-8") else character(0)
    if (!identical(as.integer(status), 0L)) {
        line <- grep("^Error: ", stderr, value = TRUE)
        msg <- if (length(line)) sub("^Error: ", "", line[length(line)]) else {
            tail_lines <- utils::tail(c(stdout, stderr)[nzchar(c(stdout, stderr))], 5)
            sprintf("exited with status %s%s", status,
                    if (length(tail_lines)) paste0(": ", paste(tail_lines, collapse = " | ")) else "")
        }
        cond <- structure(
            class = c("anndataRnnError", "error", "condition"),
            list(message = sprintf("anndata-rnn %s: %s", command, msg), call = NULL,
                 status = status, stdout = stdout, stderr = stderr))
        stop(cond)
    }
    list(stdout = stdout, stderr = stderr)
}

# output keys of a run: <key>_*, X_<key>, X_<key>_*
.ours <- function(names, keys) {
    if (!length(names) || !length(keys)) return(rep(FALSE, length(names)))
    hit <- rep(FALSE, length(names))
    for (k in keys) hit <- hit | startsWith(names, paste0(k, "_")) | names == paste0("X_", k) |
        startsWith(names, paste0("X_", k, "_"))
    hit
}

# X_<key> (anndata's name for an embedding) -> <key>
.r_name <- function(name, keys) {
    for (k in keys) if (name == paste0("X_", k)) return(k)
    name
}

.merge_results <- function(x, output, written, key_added) {
    ctx <- .reader(output)
    on.exit(.close_reader(ctx))
    keys <- if (.exists_h5(ctx, "/uns")) .children(ctx, "/uns") else character(0)
    if (!is.null(key_added)) keys <- union(key_added, keys)
    out_layers <- if (.exists_h5(ctx, "/layers")) .children(ctx, "/layers") else character(0)
    new_layers <- out_layers[!(out_layers %in% written$layers) | .ours(out_layers, keys)]
    res <- .build_sce(ctx, X = FALSE, layers = new_layers)
    if (!identical(colnames(res), written$cells) || !identical(rownames(res), written$genes))
        stop("the output of anndata-rnn does not have the cells and genes of the input", call. = FALSE)

    pick <- function(out_names, in_names) out_names[!(out_names %in% in_names) | .ours(out_names, keys)]
    cd <- SummarizedExperiment::colData(res)
    for (cn in pick(colnames(cd), colnames(SummarizedExperiment::colData(x))))
        SummarizedExperiment::colData(x)[[cn]] <- cd[[cn]]
    rd <- SummarizedExperiment::rowData(res)
    for (cn in pick(colnames(rd), colnames(SummarizedExperiment::rowData(x))))
        SummarizedExperiment::rowData(x)[[.r_name(cn, keys)]] <- rd[[cn]]
    have_rd <- if (methods::is(x, "SingleCellExperiment")) SingleCellExperiment::reducedDimNames(x) else character(0)
    for (nm in pick(SingleCellExperiment::reducedDimNames(res), have_rd)) {
        m <- SingleCellExperiment::reducedDim(res, nm)
        rownames(m) <- colnames(x)
        if (methods::is(x, "SingleCellExperiment")) {
            SingleCellExperiment::reducedDim(x, .r_name(nm, keys)) <- m
        } else {
            # a SummarizedExperiment has no reducedDims: a matrix column of colData
            SummarizedExperiment::colData(x)[[.r_name(nm, keys)]] <- m
        }
    }
    for (nm in new_layers) {
        m <- SummarizedExperiment::assay(res, nm, withDimnames = FALSE)
        dimnames(m) <- dimnames(x)
        SummarizedExperiment::assay(x, nm, withDimnames = FALSE) <- m
    }
    md <- S4Vectors::metadata(res)
    for (k in names(md)) {
        old <- S4Vectors::metadata(x)[[k]]
        new <- md[[k]]
        if (is.list(old) && is.list(new)) {
            old[names(new)] <- new
            new <- old
        }
        S4Vectors::metadata(x)[[k]] <- new
    }
    x
}

# the key of a run: the one given, else the output's uns entry with a run record
.main_key <- function(x, key_added, before) {
    if (!is.null(key_added)) return(key_added)
    md <- S4Vectors::metadata(x)
    changed <- names(md)[vapply(names(md), function(k) !identical(md[[k]], before[[k]]), logical(1))]
    runs <- changed[vapply(changed, function(k) is.list(md[[k]]) && !is.null(md[[k]]$params), logical(1))]
    if (length(runs)) runs[[1]] else if (length(changed)) changed[[1]] else NULL
}

.run_tool <- function(command, x, assay, values) {
    if (!methods::is(x, "SummarizedExperiment"))
        stop("x must be a SummarizedExperiment or SingleCellExperiment", call. = FALSE)
    values[["x"]] <- NULL
    values[["assay"]] <- NULL
    training <- command %in% c("classify", "forecast", "embed")
    if (training && is.null(values[["model_out"]]))
        values[["model_out"]] <- tempfile(paste0("anndataRnn_", command, "_"), fileext = ".h5")
    if (!is.null(values[["model"]])) values[["model"]] <- normalizePath(values[["model"]], mustWork = TRUE)

    dir <- tempfile("anndataRnn_run")
    dir.create(dir)
    on.exit(unlink(dir, recursive = TRUE))
    input <- file.path(dir, "input.h5ad")
    output <- file.path(dir, "output.h5ad")
    layers <- if (!is.null(values[["layer"]])) as.character(values[["layer"]]) else FALSE
    .write_h5ad(x, input, assay = assay, layers = layers, reduced_dims = TRUE)
    written <- list(layers = if (isFALSE(layers)) character(0) else layers,
                    cells = .w_names(colnames(x), "cell", ncol(x)),
                    genes = .w_names(rownames(x), "gene", nrow(x)))

    run <- .run_cli(command, c(input, "--output", output, .cli_args(command, values)))
    if (length(run$stdout) && !isTRUE(values[["quiet"]])) message(paste(run$stdout, collapse = "\n"))

    before <- S4Vectors::metadata(x)
    x <- .merge_results(x, output, written, values[["key_added"]])
    key <- .main_key(x, values[["key_added"]], before)
    if (!is.null(key) && is.list(S4Vectors::metadata(x)[[key]])) {
        path <- if (training) values[["model_out"]] else values[["model"]]
        S4Vectors::metadata(x)[[key]]$model_path <- normalizePath(path)
    }
    x
}
