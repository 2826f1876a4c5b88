# Writing a SummarizedExperiment / SingleCellExperiment as an .h5ad file (anndata's on-disk
# format, https://anndata.readthedocs.io/en/latest/fileformat-prose.html) with rhdf5.
# numpy booleans are HDF5 enums, which rhdf5 cannot create: those datasets (logical columns,
# the masks of nullable columns) and empty "column-order" attributes are written in a
# second pass with hdf5r, after rhdf5 has closed the file.

.w_attr <- function(obj, name, value, scalar = TRUE) {
    if (is.character(value)) {
        rhdf5::h5writeAttribute(value, obj, name, asScalar = scalar, variableLengthString = TRUE,
                                encoding = "UTF-8")
    } else {
        rhdf5::h5writeAttribute(value, obj, name, asScalar = scalar && length(value) == 1)
    }
}

.w_enc <- function(w, path, type, version, group = FALSE) {
    obj <- if (group) rhdf5::H5Gopen(w$fid, path) else rhdf5::H5Dopen(w$fid, path)
    on.exit(if (group) rhdf5::H5Gclose(obj) else rhdf5::H5Dclose(obj))
    .w_attr(obj, "encoding-type", type)
    .w_attr(obj, "encoding-version", version)
    invisible(NULL)
}

.w_group <- function(w, path, type = "dict", version = "0.1.0") {
    rhdf5::h5createGroup(w$fid, path)
    .w_enc(w, path, type, version, group = TRUE)
}

.w_strings <- function(w, x, path) {
    x <- enc2utf8(as.character(x))
    rhdf5::h5write(x, w$fid, path, variableLengthString = w$vlen, encoding = "UTF-8")
    .w_enc(w, path, "string-array", "0.2.0")
}

.w_numeric <- function(w, x, path) {
    if (is.logical(x)) {  # numpy bool: an HDF5 enum, written by hdf5r afterwards
        w$bools[[length(w$bools) + 1]] <- list(path = path, value = x)
        return(invisible(NULL))
    }
    if (!length(x)) {
        rhdf5::h5createDataset(w$fid, path, dims = 0L, storage.mode = storage.mode(x), chunk = 1L)
    } else {
        rhdf5::h5write(x, w$fid, path)
    }
    .w_enc(w, path, "array", "0.2.0")
}

.w_nullable <- function(w, x, path, type) {
    # anndata's nullable-integer / nullable-boolean / nullable-string-array: values + mask
    .w_group(w, path, type, "0.1.0")
    mask <- is.na(x)
    if (type == "nullable-string-array") {
        x[mask] <- ""
        .w_strings(w, x, paste0(path, "/values"))
    } else {
        x[mask] <- if (is.logical(x)) FALSE else 0L
        .w_numeric(w, x, paste0(path, "/values"))
    }
    .w_numeric(w, mask, paste0(path, "/mask"))
}

.w_categorical <- function(w, x, path) {
    .w_group(w, path, "categorical", "0.2.0")
    codes <- as.integer(x) - 1L
    codes[is.na(codes)] <- -1L
    .w_numeric(w, codes, paste0(path, "/codes"))
    .w_strings(w, levels(x), paste0(path, "/categories"))
    g <- rhdf5::H5Gopen(w$fid, path)
    on.exit(rhdf5::H5Gclose(g))
    # a numpy-bool attribute would be an HDF5 enum; anndata reads bool(0/1) the same way
    .w_attr(g, "ordered", as.integer(is.ordered(x)))
}

# One column of colData/rowData; FALSE when it cannot be stored as an anndata column.
.w_column <- function(w, x, path) {
    if (is.factor(x)) {
        .w_categorical(w, x, path)
    } else if (is.logical(x)) {
        if (anyNA(x)) .w_nullable(w, x, path, "nullable-boolean") else .w_numeric(w, x, path)
    } else if (is.integer(x)) {
        if (anyNA(x)) .w_nullable(w, x, path, "nullable-integer") else .w_numeric(w, x, path)
    } else if (is.double(x) && is.null(attributes(x))) {
        .w_numeric(w, x, path)
    } else if (is.character(x)) {
        if (anyNA(x)) .w_nullable(w, x, path, "nullable-string-array") else .w_strings(w, x, path)
    } else {
        return(FALSE)
    }
    TRUE
}

.w_dataframe <- function(w, df, path, names, index_name = "_index") {
    rhdf5::h5createGroup(w$fid, path)
    .w_strings(w, names, paste0(path, "/", index_name))
    written <- character(0)
    matrices <- list()
    for (cn in colnames(df)) {
        col <- df[[cn]]
        if (!.valid_h5_name(cn) || cn == index_name) {
            warning(sprintf("column '%s' not written: not a plain name for an .h5ad element", cn),
                    call. = FALSE)
            next
        }
        if (!is.null(dim(col))) {
            if (is.numeric(col) && length(dim(col)) == 2) matrices[[cn]] <- as.matrix(col)
            else warning(sprintf("column '%s' not written: not a vector or numeric matrix", cn),
                         call. = FALSE)
            next
        }
        if (.w_column(w, col, paste0(path, "/", cn))) {
            written <- c(written, cn)
        } else {
            # Dates, S4 vectors, lists...: as character, as readers of obs/var expect strings
            ok <- tryCatch(.w_column(w, as.character(col), paste0(path, "/", cn)),
                           error = function(e) FALSE)
            if (ok) written <- c(written, cn)
            else warning(sprintf("column '%s' (%s) not written", cn, class(col)[1]), call. = FALSE)
        }
    }
    .w_enc(w, path, "dataframe", "0.2.0", group = TRUE)
    g <- rhdf5::H5Gopen(w$fid, path)
    on.exit(rhdf5::H5Gclose(g))
    .w_attr(g, "_index", index_name)
    if (length(written)) .w_attr(g, "column-order", written, scalar = FALSE)
    else w$empty_order <- c(w$empty_order, path)
    matrices
}

.valid_h5_name <- function(x) {
    is.character(x) && length(x) == 1 && !is.na(x) && nzchar(x) && !grepl("/", x, fixed = TRUE) &&
        x != "." && x != ".."
}

# An assay (genes x cells) written as a cells x genes anndata matrix.
.w_matrix <- function(w, m, path) {
    if (methods::is(m, "sparseMatrix")) {
        m <- methods::as(m, "CsparseMatrix")
        if (!methods::is(m, "dgCMatrix")) m <- methods::as(methods::as(m, "generalMatrix"), "dMatrix")
        # a genes x cells CSC matrix is the cells x genes CSR matrix: same three arrays
        .w_group(w, path, "csr_matrix", "0.1.0")
        .w_numeric(w, as.double(m@x), paste0(path, "/data"))
        .w_numeric(w, as.integer(m@i), paste0(path, "/indices"))
        .w_numeric(w, as.integer(m@p), paste0(path, "/indptr"))
        g <- rhdf5::H5Gopen(w$fid, path)
        on.exit(rhdf5::H5Gclose(g))
        .w_attr(g, "shape", as.integer(rev(dim(m))), scalar = FALSE)
        return(invisible(NULL))
    }
    m <- as.matrix(m)
    if (!is.numeric(m) && !is.logical(m)) stop("assay is not numeric")
    if (!is.integer(m)) storage.mode(m) <- "double"
    dimnames(m) <- NULL
    # an R genes x cells matrix lands as (n_cells, n_genes) on disk (HDF5 is row-major)
    rhdf5::h5write(m, w$fid, path)
    .w_enc(w, path, "array", "0.2.0")
}

# a cells x k (or genes x k) matrix as an obsm/varm array
.w_side_matrix <- function(w, m, path) {
    m <- as.matrix(m)
    if (!is.numeric(m) && !is.logical(m)) return(FALSE)
    if (!is.integer(m)) storage.mode(m) <- "double"
    dimnames(m) <- NULL
    rhdf5::h5write(t(m), w$fid, path)
    .w_enc(w, path, "array", "0.2.0")
    TRUE
}

.hdf5r_pass <- function(w) {
    if (!length(w$bools) && !length(w$empty_order)) return(invisible(NULL))
    f <- hdf5r::H5File$new(w$file, mode = "r+")
    on.exit(f$close_all())
    str_type <- hdf5r::H5T_STRING$new(size = Inf)
    str_type$set_cset(hdf5r::h5const$H5T_CSET_UTF8)
    scalar <- function() hdf5r::H5S$new("scalar")
    bool_type <- hdf5r::H5T_LOGICAL$new(include_NA = FALSE)
    for (b in w$bools) {
        ds <- f$create_dataset(sub("^/", "", b$path), robj = b$value, dtype = bool_type,
                               chunk_dims = NULL)
        ds$create_attr("encoding-type", robj = "array", dtype = str_type, space = scalar())
        ds$create_attr("encoding-version", robj = "0.2.0", dtype = str_type, space = scalar())
        ds$close()
    }
    for (p in w$empty_order) {
        g <- f$open(sub("^/", "", p))
        # an empty string array (an HDF5 attribute of 0 elements is created, not written)
        g$create_attr("column-order", dtype = str_type,
                      space = hdf5r::H5S$new("simple", dims = 0L, maxdims = 0L))
        g$close()
    }
    invisible(NULL)
}

.w_names <- function(n, prefix, len) {
    if (is.null(n)) n <- paste0(prefix, seq_len(len))
    n
}

.write_h5ad <- function(x, file, assay = NULL, layers = TRUE, reduced_dims = TRUE,
                        index_names = c(obs = "_index", var = "_index"),
                        variable_length_strings = TRUE) {
    if (!methods::is(x, "SummarizedExperiment"))
        stop("x must be a SummarizedExperiment or SingleCellExperiment", call. = FALSE)
    an <- SummarizedExperiment::assayNames(x)
    n_assays <- length(SummarizedExperiment::assays(x))
    if (is.null(an) && n_assays) an <- paste0("assay", seq_len(n_assays))
    if (is.null(assay)) {
        x_name <- if (n_assays) an[[1]] else NULL
    } else if (is.numeric(assay)) {
        x_name <- an[[assay]]
    } else {
        if (!assay %in% an) stop(sprintf("no assay '%s' (assays: %s)", assay,
                                         paste(an, collapse = ", ")), call. = FALSE)
        x_name <- assay
    }
    others <- setdiff(an, x_name)
    layer_names <- if (isTRUE(layers)) others else if (is.character(layers)) intersect(layers, an) else character(0)
    if (is.character(layers) && length(miss <- setdiff(layers, an)))
        stop(sprintf("no assay '%s' (assays: %s)", miss[1], paste(an, collapse = ", ")), call. = FALSE)

    cells <- .w_names(colnames(x), "cell", ncol(x))
    genes <- .w_names(rownames(x), "gene", nrow(x))
    if (anyDuplicated(cells)) stop("column names (cells) must be unique", call. = FALSE)
    if (anyDuplicated(genes)) stop("row names (genes) must be unique", call. = FALSE)

    if (file.exists(file)) unlink(file)
    rhdf5::h5createFile(file)
    w <- new.env(parent = emptyenv())
    w$file <- normalizePath(file)
    w$fid <- rhdf5::H5Fopen(w$file)
    w$vlen <- variable_length_strings
    w$bools <- list()
    w$empty_order <- character(0)
    closed <- FALSE
    on.exit(if (!closed) rhdf5::H5Fclose(w$fid))

    root <- rhdf5::H5Gopen(w$fid, "/")
    .w_attr(root, "encoding-type", "anndata")
    .w_attr(root, "encoding-version", "0.1.0")
    rhdf5::H5Gclose(root)

    assay_by_name <- function(nm) SummarizedExperiment::assays(x, withDimnames = FALSE)[[match(nm, an)]]
    if (!is.null(x_name)) .w_matrix(w, assay_by_name(x_name), "/X")
    .w_group(w, "/layers")
    for (nm in layer_names) {
        if (!.valid_h5_name(nm)) {
            warning(sprintf("assay '%s' not written: not a plain name", nm), call. = FALSE)
            next
        }
        .w_matrix(w, assay_by_name(nm), paste0("/layers/", nm))
    }

    .w_dataframe(w, SummarizedExperiment::colData(x), "/obs", cells, index_names[["obs"]])
    var_matrices <- .w_dataframe(w, SummarizedExperiment::rowData(x), "/var", genes,
                                 index_names[["var"]])

    .w_group(w, "/obsm")
    if (!isFALSE(reduced_dims) && methods::is(x, "SingleCellExperiment")) {
        rd <- SingleCellExperiment::reducedDims(x)
        keep <- names(rd)
        if (is.character(reduced_dims)) keep <- intersect(keep, reduced_dims)
        for (nm in keep) {
            if (!.valid_h5_name(nm) || !.w_side_matrix(w, rd[[nm]], paste0("/obsm/", nm)))
                warning(sprintf("reducedDim '%s' not written", nm), call. = FALSE)
        }
    }
    .w_group(w, "/varm")
    for (nm in names(var_matrices)) .w_side_matrix(w, var_matrices[[nm]], paste0("/varm/", nm))
    for (g in c("/obsp", "/varp", "/uns")) .w_group(w, g)

    rhdf5::H5Fclose(w$fid)
    closed <- TRUE
    .hdf5r_pass(w)
    invisible(file)
}

#' Write a SummarizedExperiment or SingleCellExperiment as an .h5ad file
#'
#' Writes the object in anndata's on-disk format with \pkg{rhdf5} (and \pkg{hdf5r} for the
#' boolean datasets, which are HDF5 enums), so that anndata, scanpy and the
#' \code{anndata-rnn} command line read it. Cells (columns) become observations and genes
#' (rows) variables.
#'
#' \itemize{
#'   \item the assay chosen by \code{assay} becomes \code{X}: a dense matrix as a 2-D array,
#'     a sparse matrix (\code{dgCMatrix}, any \code{sparseMatrix}) as CSR (sorted indices);
#'   \item the other assays become \code{layers} (see \code{layers});
#'   \item \code{colData} becomes \code{obs} and \code{rowData} \code{var}: factors as
#'     categoricals (\code{NA} as code -1, ordered kept), logicals as booleans, integers as
#'     integers, doubles as floats, character as strings; integer, logical and character
#'     columns with \code{NA} use anndata's \code{nullable-integer},
#'     \code{nullable-boolean} and \code{nullable-string-array} encodings. Other column
#'     classes are written as character; numeric matrix columns of \code{rowData} become
#'     \code{varm};
#'   \item \code{reducedDims} become \code{obsm} (same names).
#' }
#' \code{metadata()} is not written. Row and column names must be unique.
#'
#' @param x A \code{SummarizedExperiment} (a \code{SingleCellExperiment} included).
#' @param file Path of the \code{.h5ad} file to write (replaced if it exists).
#' @param assay Name or index of the assay written as \code{X} (default: the first).
#' @param layers The other assays written as layers: \code{TRUE} (all), \code{FALSE}
#'   (none) or their names.
#' @param reducedDims Write the \code{reducedDims}: \code{TRUE}, \code{FALSE} or their names.
#' @return \code{file}, invisibly.
#' @seealso \code{\link{readH5ad}}
#' @examples
#' library(SingleCellExperiment)
#' counts <- Matrix::rsparsematrix(20, 10, density = 0.3)
#' dimnames(counts) <- list(paste0("g", 1:20), paste0("c", 1:10))
#' sce <- SingleCellExperiment(list(counts = abs(counts)),
#'     colData = DataFrame(type = factor(c(rep("a", 5), rep("b", 4), NA)),
#'                         n = c(1:9, NA)))
#' file <- tempfile(fileext = ".h5ad")
#' writeH5ad(sce, file)
#' back <- readH5ad(file)
#' back$type
#' back$n
#' @export
writeH5ad <- function(x, file, assay = NULL, layers = TRUE, reducedDims = TRUE) {
    .write_h5ad(x, file, assay = assay, layers = layers, reduced_dims = reducedDims)
}
