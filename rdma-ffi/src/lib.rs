pub use rdma_sys;
