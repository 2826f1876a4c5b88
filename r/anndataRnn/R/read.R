# Reading .h5ad files (anndata's on-disk format) into a SingleCellExperiment with rhdf5,
# following https://anndata.readthedocs.io/en/latest/fileformat-prose.html.
#
# Mapping (anndata -> SingleCellExperiment, genes x cells):
#   X, layers/<k>      -> assays "X", "<k>"  (dense -> matrix, csr/csc -> dgCMatrix)
#   obs, var           -> colData, rowData   (categoricals -> factor, codes -1 -> NA;
#                                             nullable-integer/boolean/string -> NA)
#   varm/<k>           -> rowData(sce)[[k]]   (a matrix column; "varm.<k>" on a clash)
#   obsm/<k>           -> reducedDims         (cells x k)
#   obsp/<k>, varp/<k> -> colPairs, rowPairs
#   uns                -> metadata(sce)       (groups -> nested lists)
#
# While reading, encodings that trip R readers (numpy bool HDF5 enums, uint8 -> raw,
# nullable-* encodings, the null encoding, unsorted sparse indices, 64-bit integers) are
# recorded; h5adEncodingIssues() returns them.

.reader <- function(file) {
    ctx <- new.env(parent = emptyenv())
    ctx$file <- normalizePath(file, mustWork = TRUE)
    ls <- rhdf5::h5ls(ctx$file, all = TRUE, recursive = TRUE)
    ls$path <- sub("^/+", "/", paste(ifelse(ls$group == "/", "", ls$group), ls$name, sep = "/"))
    ctx$ls <- ls
    ctx$otype <- stats::setNames(ls$otype, ls$path)
    ctx$issues <- list()
    ctx$h5r <- NULL
    ctx
}

.close_reader <- function(ctx) {
    if (!is.null(ctx$h5r)) {
        ctx$h5r$close_all()
        ctx$h5r <- NULL
    }
    invisible(NULL)
}

.interop <- function(ctx, path, problem, severity = "error") {
    # severity "note": reported, but not an error for strict checks
    ctx$issues[[length(ctx$issues) + 1]] <- c(path = path, problem = problem, severity = severity)
    invisible(NULL)
}

.norm <- function(path) sub("/+$", "", sub("^/*", "/", path))
.exists_h5 <- function(ctx, path) .norm(path) %in% ctx$ls$path
.ls_row <- function(ctx, path) ctx$ls[match(.norm(path), ctx$ls$path), , drop = FALSE]
.is_group <- function(ctx, path) identical(unname(ctx$otype[.norm(path)]), "H5I_GROUP")
.children <- function(ctx, path) ctx$ls$name[ctx$ls$group == .norm(path)]

.read_attrs <- function(ctx, path) {
    a <- suppressWarnings(rhdf5::h5readAttributes(ctx$file, .norm(path)))
    # rhdf5 cannot read ENUM (numpy bool) attributes: it returns NA.  The only one the
    # spec uses is categorical "ordered"; read it again with hdf5r.
    if ("ordered" %in% names(a)) a$ordered <- .read_ordered(ctx, path)
    lapply(a, function(v) if (is.array(v) && length(dim(v)) == 1) as.vector(v) else v)
}

.read_ordered <- function(ctx, path) {
    # one hdf5r handle per file (hdf5r's close_all() runs gc(), which costs ~1 s)
    if (is.null(ctx$h5r)) ctx$h5r <- hdf5r::H5File$new(ctx$file, mode = "r")
    obj <- ctx$h5r$open(sub("^/", "", .norm(path)))
    on.exit(obj$close())
    a <- obj$attr_open("ordered")
    on.exit(a$close(), add = TRUE)
    isTRUE(as.logical(a$read()))
}

.enc_type <- function(ctx, path) {
    e <- .read_attrs(ctx, path)[["encoding-type"]]
    if (is.null(e)) "" else as.character(e)
}

# One dataset, returned in numpy (C) orientation.
.read_dataset <- function(ctx, path) {
    row <- .ls_row(ctx, path)
    dtype <- row$dtype
    if (dtype %in% c("H5T_STD_I64LE", "H5T_STD_U64LE", "H5T_STD_U32LE")) {
        .interop(ctx, path, sprintf(
            "%s integer (rhdf5 returns R integer with NA past 2^31 unless bit64conversion='double')",
            dtype), severity = "note")
        x <- rhdf5::h5read(ctx$file, .norm(path), bit64conversion = "double")
        if (all(is.na(x) | (abs(x) < .Machine$integer.max & x == round(x)))) {
            d <- dim(x)
            x <- as.integer(x)
            if (length(d) > 1) dim(x) <- d
        }
    } else {
        x <- rhdf5::h5read(ctx$file, .norm(path))
    }
    if (identical(row$dclass, "ENUM")) {
        .interop(ctx, path, "numpy bool stored as HDF5 ENUM (rhdf5 returns a factor FALSE/TRUE, not logical)")
        d <- dim(x)
        x <- as.character(x) == "TRUE"
        if (length(d) > 1) dim(x) <- d
    } else if (identical(row$dclass, "COMPOUND")) {
        .interop(ctx, path, "HDF5 compound (numpy record array)")
        return(as.data.frame(x))
    }
    if (is.raw(x)) {
        .interop(ctx, path, sprintf("%s integer comes back as R 'raw'", dtype))
        d <- dim(x)
        x <- as.integer(x)
        if (identical(dtype, "H5T_STD_I8LE")) x <- ifelse(x > 127L, x - 256L, x)
        if (length(d) > 1) dim(x) <- d
    }
    attr(x, "rhdf5-NA.OK") <- NULL
    d <- dim(x)
    if (length(d) > 1) {
        x <- aperm(x, rev(seq_along(d)))  # back to numpy orientation
    } else if (length(d) == 1) {
        x <- as.vector(x)
    }
    x
}

# Recursive element reader following the anndata encoding-type attributes.
.read_elem <- function(ctx, path) {
    path <- .norm(path)
    enc <- .enc_type(ctx, path)
    if (enc == "null") {
        .interop(ctx, path, "encoding-type 'null' (rhdf5/hdf5r cannot read the empty dataset)")
        return(NULL)
    }
    if (!.is_group(ctx, path)) {
        x <- .read_dataset(ctx, path)
        if (enc %in% c("numeric-scalar", "string") && length(x) == 1) x <- x[[1]]
        return(x)
    }
    switch(enc,
        "dataframe" = .read_dataframe(ctx, path),
        "categorical" = .read_categorical(ctx, path),
        "csr_matrix" = .read_sparse(ctx, path, "csr"),
        "csc_matrix" = .read_sparse(ctx, path, "csc"),
        "nullable-integer" = .read_nullable(ctx, path, enc),
        "nullable-boolean" = .read_nullable(ctx, path, enc),
        "nullable-string-array" = .read_nullable(ctx, path, enc),
        "awkward-array" = {
            .interop(ctx, path, "awkward-array is not readable from R")
            NULL
        },
        {
            # "dict", "" (old files) and anything unknown: nested list
            out <- list()
            for (ch in .children(ctx, path)) {
                v <- tryCatch(.read_elem(ctx, paste0(path, "/", ch)), error = function(e) {
                    .interop(ctx, paste0(path, "/", ch), paste("unreadable:", conditionMessage(e)))
                    NULL
                })
                out[ch] <- list(v)
            }
            out
        })
}

.read_categorical <- function(ctx, path) {
    a <- .read_attrs(ctx, path)
    codes <- .read_dataset(ctx, paste0(path, "/codes"))
    lev <- as.character(.read_elem(ctx, paste0(path, "/categories")))
    codes[codes < 0] <- NA
    factor(lev[codes + 1L], levels = lev, ordered = isTRUE(a$ordered))
}

.read_nullable <- function(ctx, path, enc) {
    .interop(ctx, path, sprintf(
        "encoding-type '%s' (values+mask group; zellkonverter/anndataR readers drop or mangle it)", enc))
    v <- .read_dataset(ctx, paste0(path, "/values"))
    if (.exists_h5(ctx, paste0(path, "/mask"))) {
        m <- .read_dataset(ctx, paste0(path, "/mask"))
        v[as.logical(m)] <- NA
    }
    if (enc == "nullable-boolean") v <- as.logical(v)
    if (enc == "nullable-integer" && is.numeric(v) && !is.integer(v) &&
        all(is.na(v) | abs(v) < .Machine$integer.max)) v <- as.integer(v)
    v
}

.read_sparse <- function(ctx, path, fmt) {
    a <- .read_attrs(ctx, path)
    shape <- as.integer(a$shape)
    x <- as.numeric(.read_dataset(ctx, paste0(path, "/data")))
    idx <- as.integer(.read_dataset(ctx, paste0(path, "/indices")))
    ptr <- as.integer(.read_dataset(ctx, paste0(path, "/indptr")))
    # dgCMatrix needs strictly increasing indices inside each compressed slice
    lens <- diff(ptr)
    slice <- rep.int(seq_along(lens), lens)
    if (length(idx) > 1) {
        same <- slice[-1] == slice[-length(slice)]
        bad <- same & (idx[-1] <= idx[-length(idx)])
        if (any(bad)) {
            first <- which(bad)[1]
            .interop(ctx, path, sprintf(
                "unsorted or duplicate %s indices inside %s %d (dgCMatrix rejects them; write with sort_indices())",
                if (fmt == "csr") "column" else "row",
                if (fmt == "csr") "row" else "column", slice[first] - 1L))
        }
    }
    if (fmt == "csr") {
        # numpy (n_row x n_col) CSR == (n_col x n_row) CSC: build the transpose
        m <- Matrix::sparseMatrix(i = idx + 1L, j = slice, x = x, dims = rev(shape))
        Matrix::t(m)
    } else {
        Matrix::sparseMatrix(i = idx + 1L, j = slice, x = x, dims = shape)
    }
}

.read_dataframe <- function(ctx, path) {
    a <- .read_attrs(ctx, path)
    idx_name <- if (is.null(a[["_index"]])) "_index" else as.character(a[["_index"]])
    # an index written from pandas' string dtype is a nullable-string-array group
    idx <- as.character(.read_elem(ctx, paste0(path, "/", idx_name)))
    cols <- as.character(unlist(a[["column-order"]]))
    df <- methods::new("DFrame", nrows = length(idx), rownames = idx)
    for (cn in cols) {
        v <- tryCatch(.read_elem(ctx, paste0(path, "/", cn)), error = function(e) {
            .interop(ctx, paste0(path, "/", cn), paste("unreadable:", conditionMessage(e)))
            NULL
        })
        if (is.null(v)) next
        if (methods::is(v, "sparseMatrix")) v <- as.matrix(v)
        df[[cn]] <- v
    }
    df
}

# genes x cells assay from an anndata (cells x genes) matrix
.to_gxc <- function(m, what, cells, genes) {
    if (is.data.frame(m) || methods::is(m, "DataFrame")) stop(what, " is a data frame")
    if (!identical(as.integer(dim(m)), c(length(cells), length(genes))))
        stop(sprintf("%s has shape %s, expected %d x %d", what,
                     paste(dim(m), collapse = " x "), length(cells), length(genes)))
    m <- if (methods::is(m, "Matrix")) Matrix::t(m) else t(m)
    if (is.logical(m) || is.integer(m)) storage.mode(m) <- "double"
    dimnames(m) <- list(genes, cells)
    m
}

.obsm_matrix <- function(ctx, k, m, cells) {
    if (methods::is(m, "DataFrame") || is.data.frame(m)) {
        num <- vapply(as.list(m), is.numeric, logical(1))
        if (!all(num)) {
            .interop(ctx, paste0("/obsm/", k), "a non-numeric data frame (not a reducedDim); skipped",
                     severity = "note")
            return(NULL)
        }
        m <- as.matrix(as.data.frame(m))
    }
    if (methods::is(m, "sparseMatrix")) m <- as.matrix(m)
    if (is.null(dim(m))) m <- matrix(m, ncol = 1)
    rownames(m) <- cells
    m
}

# Build the SingleCellExperiment; `layers`: TRUE (all), FALSE or names; `X`: read X or not.
.build_sce <- function(ctx, X = TRUE, layers = TRUE) {
    obs <- .read_dataframe(ctx, "/obs")
    var <- .read_dataframe(ctx, "/var")
    cells <- rownames(obs)
    genes <- rownames(var)

    assays <- list()
    if (isTRUE(X) && .exists_h5(ctx, "/X"))
        assays[["X"]] <- .to_gxc(.read_elem(ctx, "/X"), "X", cells, genes)
    if (.exists_h5(ctx, "/layers")) {
        keep <- .children(ctx, "/layers")
        if (is.character(layers)) keep <- intersect(keep, layers) else if (!isTRUE(layers)) keep <- character(0)
        for (k in keep)
            assays[[k]] <- .to_gxc(.read_elem(ctx, paste0("/layers/", k)), paste0("layers/", k), cells, genes)
    }

    rdims <- list()
    if (.exists_h5(ctx, "/obsm")) for (k in .children(ctx, "/obsm")) {
        m <- .obsm_matrix(ctx, k, .read_elem(ctx, paste0("/obsm/", k)), cells)
        if (!is.null(m)) rdims[[k]] <- m
    }

    rd <- var
    if (.exists_h5(ctx, "/varm")) for (k in .children(ctx, "/varm")) {
        m <- .read_elem(ctx, paste0("/varm/", k))
        if (is.data.frame(m)) m <- S4Vectors::DataFrame(m, check.names = FALSE)
        if (methods::is(m, "sparseMatrix")) m <- as.matrix(m)
        if (is.null(dim(m))) m <- matrix(m, ncol = 1)
        rownames(m) <- genes
        nm <- if (k %in% colnames(rd)) paste0("varm.", k) else k
        rd[[nm]] <- m
    }

    sce <- SingleCellExperiment::SingleCellExperiment(
        assays = assays, colData = obs, rowData = rd, reducedDims = rdims)
    if (.exists_h5(ctx, "/obsp")) for (k in .children(ctx, "/obsp"))
        SingleCellExperiment::colPair(sce, k) <- .read_elem(ctx, paste0("/obsp/", k))
    if (.exists_h5(ctx, "/varp")) for (k in .children(ctx, "/varp"))
        SingleCellExperiment::rowPair(sce, k) <- .read_elem(ctx, paste0("/varp/", k))
    if (.exists_h5(ctx, "/uns")) S4Vectors::metadata(sce) <- .read_elem(ctx, "/uns")
    sce
}

.issues_frame <- function(ctx) {
    if (!length(ctx$issues))
        return(data.frame(path = character(0), problem = character(0), severity = character(0),
                          stringsAsFactors = FALSE))
    as.data.frame(do.call(rbind, ctx$issues), stringsAsFactors = FALSE)
}

# Read a file: list(sce = , issues = ) (one pass; used by readH5ad and h5adEncodingIssues)
.read_h5ad <- function(file, X = TRUE, layers = TRUE) {
    ctx <- .reader(file)
    on.exit(.close_reader(ctx))
    sce <- .build_sce(ctx, X = X, layers = layers)
    list(sce = sce, issues = .issues_frame(ctx))
}

#' Read an .h5ad file into a SingleCellExperiment
#'
#' Reads an AnnData \code{.h5ad} file (written by anndata, scanpy or anndata-rnn) with
#' \pkg{rhdf5} only, following anndata's on-disk specification. No Python, conda or
#' basilisk is involved.
#'
#' The mapping is: \code{X} and \code{layers/<k>} become assays \code{"X"} and
#' \code{"<k>"} (genes x cells; dense as \code{matrix}, CSR/CSC as \code{dgCMatrix});
#' \code{obs} becomes \code{colData} and \code{var} \code{rowData} (categoricals as
#' factors with \code{NA} for code -1, nullable integers/booleans/strings with \code{NA});
#' \code{obsm/<k>} becomes \code{reducedDim(sce, "<k>")}; \code{varm/<k>} becomes a
#' matrix column \code{rowData(sce)[["<k>"]]}; \code{obsp}/\code{varp} become
#' \code{colPairs}/\code{rowPairs}; \code{uns} becomes \code{metadata(sce)} (groups as
#' nested lists).
#'
#' @param file Path of the \code{.h5ad} file.
#' @param X Read \code{X} as the assay \code{"X"} (\code{FALSE} skips it).
#' @param layers Which layers to read as assays: \code{TRUE} (all), \code{FALSE} (none)
#'   or a character vector of layer names.
#' @return A \code{SingleCellExperiment}.
#' @seealso \code{\link{writeH5ad}} for the other direction, \code{\link{h5adEncodingIssues}}.
#' @examples
#' file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
#' sce <- readH5ad(file)
#' sce
#' table(rowData(sce)$cell_cycle_800)
#' @export
readH5ad <- function(file, X = TRUE, layers = TRUE) {
    .read_h5ad(file, X = X, layers = layers)$sce
}

#' Encodings in an .h5ad file that trip R readers
#'
#' Reads the file as \code{\link{readH5ad}} does and lists the elements whose on-disk
#' encoding R readers commonly mishandle: numpy booleans stored as HDF5 enums, uint8/int8
#' arrays (R \code{raw}), the nullable-* encodings, the \code{null} encoding, unsorted or
#' duplicate sparse indices and 64-bit integers (a note). \code{readH5ad} decodes all of
#' them; other readers may not.
#'
#' @param file Path of the \code{.h5ad} file.
#' @return A \code{data.frame} with columns \code{path}, \code{problem} and
#'   \code{severity} (\code{"error"} or \code{"note"}), one row per finding.
#' @examples
#' file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
#' h5adEncodingIssues(file)
#' @export
h5adEncodingIssues <- function(file) {
    .read_h5ad(file)$issues
}
