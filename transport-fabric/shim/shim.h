/* The static-inline libfabric calls pmrun uses, as real functions that
 * bindgen can bind and Rust can link. Each is a one-line forward; keep
 * logic out of here (it belongs in src/sys, where it is tested). */
#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>

uint32_t pmf_version(void);
struct fi_info *pmf_allocinfo(void);
/* Sets hints->fabric_attr->prov_name to a malloc'ed copy (fi_freeinfo frees it). */
int pmf_set_prov_name(struct fi_info *hints, const char *name);
int pmf_close(struct fid *fid);
int pmf_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain);
int pmf_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep);
int pmf_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq);
int pmf_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av);
int pmf_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags);
int pmf_enable(struct fid_ep *ep);
int pmf_getname(struct fid *fid, void *addr, size_t *addrlen);
int pmf_av_insert(struct fid_av *av, const void *addr, fi_addr_t *fi_addr);
int pmf_av_remove(struct fid_av *av, fi_addr_t fi_addr);
int pmf_mr_reg(struct fid_domain *domain, const void *buf, size_t len, uint64_t access,
               uint64_t requested_key, struct fid_mr **mr);
uint64_t pmf_mr_key(struct fid_mr *mr);
void *pmf_mr_desc(struct fid_mr *mr);
int pmf_mr_bind(struct fid_mr *mr, struct fid *bfid, uint64_t flags);
int pmf_mr_enable(struct fid_mr *mr);
ssize_t pmf_read(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                 uint64_t addr, uint64_t key, void *context);
ssize_t pmf_write(struct fid_ep *ep, const void *buf, size_t len, void *desc, fi_addr_t dest,
                  uint64_t addr, uint64_t key, void *context);
ssize_t pmf_cq_read(struct fid_cq *cq, struct fi_cq_entry *buf, size_t count);
ssize_t pmf_cq_sread(struct fid_cq *cq, struct fi_cq_entry *buf, size_t count, int timeout_ms);
ssize_t pmf_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf);
const char *pmf_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data, char *buf,
                            size_t len);
