#' Read an anndata-rnn model file
#'
#' Reads a model file written by a training command of \code{anndata-rnn}
#' (\code{--model-out}; \code{metadata(x)$rnn$model_path} after \code{\link{rnnClassify}},
#' \code{\link{rnnForecast}} or \code{\link{rnnEmbed}}) with \pkg{rhdf5} and checks its
#' layout: root attributes \code{format = "anndata-rnn-model"}, \code{format_version} and
#' \code{config} (JSON), \code{/weights/<name>} (one array per tensor), \code{/features/names},
#' optional \code{/preprocessing/mean}, \code{/preprocessing/std} and \code{/arrays/<name>}.
#'
#' @param file Path of the model file.
#' @param weights Also return the weight arrays (numpy orientation).
#' @return A list: \code{format}, \code{format_version}, \code{config} (the parsed JSON),
#'   \code{task}, \code{layout} (\code{config$layout}; older files also repeat it in
#'   \code{config$keys} and \code{config$preprocessing}, which must agree),
#'   \code{classes}, \code{features}, \code{preprocessing} (list of mean and std, or
#'   \code{NULL}), \code{shapes} (named list of the weights'
#'   dimensions), \code{n_params}, \code{arrays} and, with \code{weights = TRUE},
#'   \code{weights}. An error names what does not follow the layout.
#' @seealso \code{\link{rnnPredict}} applies a model to new data.
#' @examples
#' \dontshow{if (rnnAvailable()) \{}
#' file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
#' yeast <- readH5ad(file)
#' yeast <- rnnClassify(yeast, label = "cell_cycle_800", layout = "var-series",
#'     series_key = "series", time_key = "time", series_subset = "cdc15",
#'     hidden = 8, epochs = 2, min_steps = 0, quiet = TRUE)
#' m <- readRnnModel(metadata(yeast)$rnn$model_path)
#' m$task
#' m$classes
#' head(m$features)
#' \dontshow{\}}
#' @export
readRnnModel <- function(file, weights = FALSE) {
    die <- function(...) stop(paste("model file", sQuote(file), ...), call. = FALSE)
    if (!file.exists(file)) die("does not exist")
    ls <- rhdf5::h5ls(file, all = TRUE)
    ls$path <- paste(ifelse(ls$group == "/", "", ls$group), ls$name, sep = "/")

    attrs <- suppressWarnings(rhdf5::h5readAttributes(file, "/"))
    for (a in c("format", "format_version", "config"))
        if (is.null(attrs[[a]])) die("has no root attribute", sQuote(a))
    fmt <- as.character(attrs$format)
    if (fmt != "anndata-rnn-model") die("has format", sQuote(fmt), "not 'anndata-rnn-model'")
    version <- attrs$format_version
    if (!is.numeric(version) || length(version) != 1 || version != round(version))
        die("has a format_version that is not an integer:", format(version))
    version <- as.integer(version)
    config_text <- as.character(attrs$config)
    config <- tryCatch(jsonlite::fromJSON(config_text, simplifyVector = TRUE),
                       error = function(e) die("has a config that is not valid JSON:", conditionMessage(e)))
    if (!is.list(config)) die("has a config that is not a JSON object")
    if (!is.null(config$format) && config$format != fmt) die("config$format differs from the attribute")
    if (!is.null(config$format_version) && config$format_version != version)
        die("config$format_version differs from the attribute")
    # the layout is stored once, as config$layout; files written before that (anndata-rnn 0.2
    # and 0.3.0 development builds) repeat it in config$keys and config$preprocessing, which
    # must agree (as the Python reader checks) and are otherwise not read
    layout <- if (!is.null(config$layout)) as.character(config$layout) else NA_character_
    for (part in c("keys", "preprocessing")) {
        copy <- if (is.list(config[[part]])) config[[part]]$layout else NULL
        if (!is.null(copy) && !identical(as.character(copy), layout))
            die(sprintf("has config$%s$layout %s, not the model's layout %s", part,
                        sQuote(as.character(copy)[1]), sQuote(layout)))
    }

    if (!("/features/names" %in% ls$path)) die("has no dataset /features/names")
    features <- as.character(rhdf5::h5read(file, "/features/names"))
    if (anyNA(features)) die("has NA feature names")
    pre <- NULL
    if (all(c("/preprocessing/mean", "/preprocessing/std") %in% ls$path)) {
        pre <- list()
        for (p in c("mean", "std")) {
            v <- as.numeric(rhdf5::h5read(file, paste0("/preprocessing/", p)))
            # var-series: every gene is one sequence of a single feature, so one mean/std
            n_stats <- if (identical(layout, "var-series")) 1L else length(features)
            if (length(v) != n_stats)
                die(sprintf("has %d values in /preprocessing/%s for %d features", length(v), p,
                            n_stats))
            if (!all(is.finite(v))) die("has non-finite values in /preprocessing/", p)
            pre[[p]] <- v
        }
    }

    wrows <- ls[ls$group == "/weights" & ls$otype == "H5I_DATASET", ]
    if (nrow(wrows) == 0) die("has no datasets under /weights")
    shapes <- list()
    values <- list()
    n_params <- 0
    for (k in seq_len(nrow(wrows))) {
        w <- rhdf5::h5read(file, wrows$path[k], bit64conversion = "double")
        attr(w, "rhdf5-NA.OK") <- NULL
        if (!is.numeric(w)) die(wrows$path[k], "is not numeric (", class(w)[1], ")")
        if (!all(is.finite(as.numeric(w)))) die(wrows$path[k], "has non-finite values")
        d <- if (is.null(dim(w))) length(w) else rev(dim(w))  # numpy orientation
        if (wrows$dim[k] == "( 0 )") d <- integer(0)
        shapes[[wrows$name[k]]] <- as.integer(d)
        if (weights) values[[wrows$name[k]]] <- if (length(dim(w)) > 1) aperm(w, rev(seq_along(dim(w)))) else as.vector(w)
        n_params <- n_params + length(w)
    }

    arrays <- list()
    for (p in ls$path[ls$group == "/arrays" & ls$otype == "H5I_DATASET"]) {
        v <- rhdf5::h5read(file, p)
        arrays[[basename(p)]] <- if (is.factor(v)) as.character(v) else as.vector(v)
    }
    out <- list(
        format = fmt, format_version = version, config = config,
        task = if (!is.null(config$task)) as.character(config$task) else NA_character_,
        layout = layout,
        classes = if (!is.null(config$classes)) as.character(config$classes) else character(0),
        features = features, preprocessing = pre, shapes = shapes, n_params = n_params,
        arrays = arrays)
    if (weights) out$weights <- values
    out
}
