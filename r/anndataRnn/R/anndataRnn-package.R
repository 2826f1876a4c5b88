#' anndataRnn: recurrent networks on SingleCellExperiment and SummarizedExperiment objects
#'
#' Runs the \code{anndata-rnn} command line on Bioconductor objects and returns the same
#' object with the results added: \code{\link{rnnClassify}}, \code{\link{rnnForecast}},
#' \code{\link{rnnEmbed}}, \code{\link{rnnExplain}} and \code{\link{rnnPredict}}.
#' \code{\link{readH5ad}} and \code{\link{writeH5ad}} convert between these objects and
#' AnnData \code{.h5ad} files with \pkg{rhdf5} alone; \code{\link{readRnnModel}} reads a
#' model file. See \code{vignette("anndataRnn")}.
#'
#' @keywords internal
#' @importFrom SingleCellExperiment reducedDim reducedDimNames
#' @importFrom SummarizedExperiment assay assayNames colData rowData
#' @importFrom S4Vectors metadata
"_PACKAGE"
